"""Comparing the two answers of one question: how similar they are, and which a judge prefers.

Similarity is the cosine of all-MiniLM-L6-v2 embeddings (`models.embeddings.embedding_model`,
offline). The judge is any engine, asked through eval's `relevance` evaluator for each answer
(same prompt, cache and reply parser as `slmforge eval`); the higher score is preferred and the
judge's own reasons say why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import SlmforgeError
from slmforge.evaluate.judge import Judge, JudgeCache, judge_prompts
from slmforge.runtime.engine import Engine

JUDGE_EVALUATOR = "relevance"


def similarity(first: str, second: str) -> float:
    """Cosine similarity of the two texts' embeddings, in [-1, 1]."""
    from slmforge.models.embeddings import embedding_model

    left, right = embedding_model().encode([first, second], normalize_embeddings=True)
    return float(max(min(float((left * right).sum()), 1.0), -1.0))


def similarity_or_reason(first: str, second: str) -> tuple[float | None, str | None]:
    """The similarity, or None and why it could not be computed (e.g. the eval extra)."""
    if not first.strip() or not second.strip():
        return None, "one of the answers is empty"
    try:
        return similarity(first, second), None
    except SlmforgeError as exc:
        return None, str(exc)


@dataclass
class Preference:
    preferred: str | None  # "local", "cloud", "tie", or None when the judge gave no verdict
    reason: str
    scores: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PairJudge:
    """Which of two answers a judge engine prefers, and why."""

    def __init__(self, engine: Engine, spec: str, cache: Path | None = None) -> None:
        """`cache`: a JSONL file of the judge's replies, reused by a resumed run."""
        self.judge = Judge(engine, spec, JudgeCache(cache))
        self.prompt = judge_prompts()[JUDGE_EVALUATOR]

    def prefer(self, question: str, answers: dict[str, str]) -> Preference:
        verdicts = {
            side: self.judge.evaluate(self.prompt, {"question": question, "answer": answer})
            for side, answer in answers.items()
        }
        scores = {side: v.score for side, v in verdicts.items()}
        failed = [
            f"{side}: {v.reason or v.status}" for side, v in verdicts.items() if v.score is None
        ]
        if failed:
            return Preference(
                None, "the judge gave no usable score (" + "; ".join(failed) + ")", scores
            )
        (first, a), (second, b) = scores.items()
        shown = f"{JUDGE_EVALUATOR} {first} {a:g} vs {second} {b:g}"
        if a == b:
            return Preference("tie", f"{shown}: {verdicts[first].reason}", scores)
        winner = first if a > b else second  # type: ignore[operator]
        return Preference(winner, f"{shown}: {verdicts[winner].reason}", scores)
