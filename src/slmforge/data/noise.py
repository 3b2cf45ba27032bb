"""Noise that mirrors real user input: typos, casing, missing punctuation, abbreviations.

`noisy(text, rng, level)` applies a random non-empty subset of the edits, in a fixed order, with
the caller's seeded `random.Random`, so the same seed gives the same text on every machine.
Only user messages are ever passed here: responses stay exactly as they were.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# phrase -> how people type it in a hurry (matched as whole words, case-insensitively)
ABBREVIATIONS = {
    "you": "u",
    "your": "ur",
    "are": "r",
    "please": "pls",
    "thanks": "thx",
    "thank you": "ty",
    "because": "bc",
    "tomorrow": "tmrw",
    "with": "w/",
    "without": "w/o",
    "people": "ppl",
    "about": "abt",
    "before": "b4",
    "information": "info",
    "really": "rly",
    "something": "smth",
    "minutes": "mins",
    "hours": "hrs",
    "okay": "ok",
    "do not": "dont",
    "i am": "im",
    "what is": "whats",
    "recommend": "reccomend",
}
_ABBREVIATION = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, ABBREVIATIONS), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# neighbouring keys on a QWERTY keyboard, for substitution typos
_NEIGHBOURS = {
    "a": "sqz",
    "b": "vn",
    "c": "xv",
    "d": "sf",
    "e": "wr",
    "f": "dg",
    "g": "fh",
    "h": "gj",
    "i": "uo",
    "j": "hk",
    "k": "jl",
    "l": "k",
    "m": "n",
    "n": "bm",
    "o": "ip",
    "p": "o",
    "q": "w",
    "r": "et",
    "s": "ad",
    "t": "ry",
    "u": "yi",
    "v": "cb",
    "w": "qe",
    "x": "zc",
    "y": "tu",
    "z": "x",
}
_WORD = re.compile(r"[A-Za-z]{3,}")
_DROPPED_PUNCTUATION = re.compile(r"[?!.,;:'’]")


def abbreviations(text: str, rng: random.Random, level: float) -> str:
    def swap(match: re.Match[str]) -> str:
        return ABBREVIATIONS[match.group(0).lower()] if rng.random() < 0.5 + level else match[0]

    return _ABBREVIATION.sub(swap, text)


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "neighbour"))
    if kind == "swap":
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower(), word[i])
    return word[:i] + rng.choice(near) + word[i + 1 :]


def typos(text: str, rng: random.Random, level: float) -> str:
    words = list(_WORD.finditer(text))
    if not words:
        return text
    count = max(1, round(len(words) * level / 2))
    chosen = {m.start() for m in rng.sample(words, min(count, len(words)))}
    return _WORD.sub(lambda m: _typo(m[0], rng) if m.start() in chosen else m[0], text)


def punctuation(text: str, rng: random.Random, level: float) -> str:
    """Drop the final punctuation, and each other mark with probability `level`."""
    body = text.rstrip("?!. ")
    return _DROPPED_PUNCTUATION.sub(lambda m: "" if rng.random() < level else m[0], body)


def casing(text: str, rng: random.Random, level: float) -> str:
    style = rng.choice(("lower", "lower", "first_lower", "shout_word"))
    if style == "lower":
        return text.lower()
    if style == "first_lower":
        return text[:1].lower() + text[1:]
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = words[i].upper()
    return " ".join(words)


Edit = Callable[[str, random.Random, float], str]
EDITS: dict[str, Edit] = {
    "abbreviations": abbreviations,
    "typos": typos,
    "punctuation": punctuation,
    "casing": casing,
}


def noisy(text: str, rng: random.Random, level: float) -> tuple[str, list[str]]:
    """The text with a random non-empty subset of the edits applied, and their names."""
    chosen = [name for name in EDITS if rng.random() < 0.5]
    chosen = chosen or [rng.choice(list(EDITS))]
    result, applied = text, []
    for name in chosen:
        edited = EDITS[name](result, rng, level)
        if edited != result:  # only edits that changed something are reported
            result = edited
            applied.append(name)
    if result == text or not result.strip():  # nothing to edit: at least change the casing
        result, applied = text.lower() if text != text.lower() else text.upper(), ["casing"]
    return result, applied
