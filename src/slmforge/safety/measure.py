"""Precision and recall of classifiers on a labelled set of texts.

The shipped set (`resources/safety/labelled.jsonl`, written for the project: everyday text with
near-misses such as "kill a process", and harmful text per category) is what docs/safety.md
reports; users can measure on their own file of `{"text": ..., "categories": [...]}` lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slmforge.errors import InputError
from slmforge.safety.classifiers.base import BAND_FLOOR, CATEGORIES, Classifier


@dataclass(frozen=True)
class Labelled:
    text: str
    categories: frozenset[str]


@dataclass
class Score:
    classifier: str
    category: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def precision(self) -> float | None:
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        positives = self.tp + self.fn
        return self.tp / positives if positives else None

    @property
    def false_positive_rate(self) -> float | None:
        negatives = self.fp + self.tn
        return self.fp / negatives if negatives else None


def read_labelled(path: str | Path | None = None) -> list[Labelled]:
    if path is None:
        source = resources.files("slmforge.resources").joinpath("safety/labelled.jsonl")
        text, where = source.read_text(encoding="utf-8"), "labelled.jsonl (shipped)"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            categories = frozenset(item["categories"])
            rows.append(Labelled(str(item["text"]), categories))
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"{where}:{number}: expected {{'text': ..., 'categories': [...]}}"
            ) from None
        unknown = categories - set(CATEGORIES)
        if unknown:
            raise InputError(f"{where}:{number}: categories: unknown {sorted(unknown)[0]!r}")
    return rows


def measure(
    classifiers: dict[str, Classifier],
    rows: list[Labelled],
    threshold: str = "low",
    direction: str = "input",
) -> list[Score]:
    """One score per classifier and category it reported on any text of the set: a text
    counts as flagged for a category at `threshold` or above."""
    floor = BAND_FLOOR[threshold]
    scores: list[Score] = []
    for name, classifier in classifiers.items():
        flagged = [
            {r.category for r in classifier.classify(row.text, direction) if r.severity >= floor}
            for row in rows
        ]
        for category in sorted(set().union(*flagged)):
            score = Score(name, category)
            for row, found in zip(rows, flagged, strict=True):
                truth, guess = category in row.categories, category in found
                score.tp += truth and guess
                score.fp += guess and not truth
                score.fn += truth and not guess
                score.tn += not truth and not guess
            scores.append(score)
    return scores
