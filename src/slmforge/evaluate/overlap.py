"""Text normalization and the word-overlap metrics implemented here: SQuAD F1, GLEU, METEOR.

GLEU and METEOR follow NLTK's `sentence_gleu` and `single_meteor_score` exactly (the
definitions azure-ai-evaluation uses), but need no NLTK data: NLTK tokenizes with `punkt` and
finds synonyms in WordNet, both downloads that fail offline. Here words are split by a regex
(runs of letters/digits, and each punctuation mark on its own, as the Treebank tokenizer does
for plain sentences), and METEOR aligns exact words, then Porter stems. WordNet synonym matching
is the one stage left out, so METEOR can be slightly lower than NLTK's with WordNet where an
answer uses a synonym of a reference word.
"""

from __future__ import annotations

import itertools
import re
import string
from collections import Counter
from collections.abc import Callable
from functools import cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_WORDS = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(answer: str, reference: str) -> float:
    """Token F1 of SQuAD v1.1's evaluation script (azure-ai-evaluation's F1ScoreEvaluator)."""
    pred, gold = squad_normalize(answer).split(), squad_normalize(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def words(text: str) -> list[str]:
    """Words and punctuation marks as separate tokens ("Don't go!" -> Don't, go, !)."""
    return _WORDS.findall(text)


def _ngrams(tokens: list[str], max_n: int) -> Counter[tuple[str, ...]]:
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)
    )


def gleu(answer: str, reference: str, max_n: int = 4) -> float:
    """Google-BLEU (Wu et al. 2016) of one sentence: matching 1..4-grams divided by the larger
    of the answer's and the reference's n-gram count, i.e. min(precision, recall)."""
    hyp, ref = _ngrams(words(answer), max_n), _ngrams(words(reference), max_n)
    total = max(sum(hyp.values()), sum(ref.values()))
    return sum((hyp & ref).values()) / total if total else 0.0


@cache
def _porter() -> Callable[[str], str]:
    from nltk.stem.porter import PorterStemmer  # algorithmic, no data download

    return PorterStemmer().stem


def _match(hyp: list[tuple[int, str]], ref: list[tuple[int, str]]):
    """NLTK's matching: from the last answer word back, take the last unused reference word of
    the same form. Returns (pairs, unmatched answer words, unmatched reference words)."""
    positions: dict[str, list[int]] = {}
    for j, (_, word) in enumerate(ref):
        positions.setdefault(word, []).append(j)
    pairs, used_hyp, used_ref = [], set(), set()
    for i in range(len(hyp) - 1, -1, -1):
        free = positions.get(hyp[i][1])
        if free:
            j = free.pop()
            used_hyp.add(i)
            used_ref.add(j)
            pairs.append((hyp[i][0], ref[j][0]))
    rest_hyp = [p for i, p in enumerate(hyp) if i not in used_hyp]
    rest_ref = [p for j, p in enumerate(ref) if j not in used_ref]
    return pairs, rest_hyp, rest_ref


def _chunks(pairs: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent in both the answer and the reference."""
    chunks = 1
    for (h0, r0), (h1, r1) in itertools.pairwise(pairs):
        if not (h1 == h0 + 1 and r1 == r0 + 1):
            chunks += 1
    return chunks


def meteor(
    answer: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5
) -> float:
    """METEOR (Lavie and Agarwal 2007 parameters, as NLTK): harmonic mean weighted to recall,
    times a fragmentation penalty; alignment by exact words, then Porter stems."""
    hyp = list(enumerate(w.lower() for w in words(answer)))
    ref = list(enumerate(w.lower() for w in words(reference)))
    if not hyp or not ref:
        return 0.0
    exact, rest_hyp, rest_ref = _match(hyp, ref)
    stem = _porter()
    stemmed, _, _ = _match([(i, stem(w)) for i, w in rest_hyp], [(j, stem(w)) for j, w in rest_ref])
    pairs = sorted(exact + stemmed)
    if not pairs:
        return 0.0
    precision, recall = len(pairs) / len(hyp), len(pairs) / len(ref)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    penalty = gamma * (_chunks(pairs) / len(pairs)) ** beta
    return (1 - penalty) * fmean
