"""Text folding for term matching, so obfuscation does not hide a blocked term.

`fold` undoes what people do to slip past word lists: Unicode compatibility forms (fullwidth,
ligatures), diacritics, zero-width and soft-hyphen characters, Cyrillic/Greek look-alike
letters, leetspeak digits and symbols, case, and letters spaced apart ("k i l l", "k.i.l.l").
"""

from __future__ import annotations

import re
import unicodedata

ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\ufeff"))
HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
        "ɡ": "g", "һ": "h", "ӏ": "l",
        # Greek
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    }
)  # fmt: skip
LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                      "$": "s", "!": "i", "|": "l", "+": "t"})  # fmt: skip
# three or more single characters separated by spaces or punctuation: "k i l l", "k-i-l-l"
SPACED = re.compile(r"(?<![^\W_])(?:[^\W_][\s.\-_*·]+){2,}[^\W_](?![^\W_])")
LEET_WORD = re.compile(r"\S*[A-Za-z]\S*")


def _unspace(match: re.Match[str]) -> str:
    return re.sub(r"[\s.\-_*·]+", "", match.group(0))


def _leet(match: re.Match[str]) -> str:
    # fold only inside words that also have letters ("k1ll", "$hit"), so "top 10" stays, and
    # leave trailing punctuation ("kill!") as punctuation
    word = match.group(0)
    core = word.rstrip(".,;:!?)]}'\"")
    return core.translate(LEET) + word[len(core) :]


def fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.casefold().translate(HOMOGLYPHS)
    text = LEET_WORD.sub(_leet, text)
    text = SPACED.sub(_unspace, text)
    return re.sub(r"\s+", " ", text)
