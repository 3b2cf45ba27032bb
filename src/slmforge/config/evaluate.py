"""Options of `slmforge eval` (a data set through one or more targets, scored and reported)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmforge.config.data import ReadOptions

DEFAULT_METRICS = [
    "exact_match",
    "f1",
    "bleu",
    "chrf",
    "rouge1",
    "rouge2",
    "rougeL",
    "gleu",
    "meteor",
    "length",
    "refusal",
]
DEFAULT_JUDGE_METRICS = ["groundedness", "relevance", "coherence", "fluency", "similarity"]
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TargetSpec:
    """One `--target`: a short name for tables and the engine spec it stands for."""

    name: str
    spec: str


def target_spec(text: str) -> TargetSpec:
    """`NAME=SPEC` or `SPEC`; a bare spec is named after its folder or model."""
    name, sep, spec = text.partition("=")
    if sep and _NAME.match(name.strip()):
        return TargetSpec(name.strip(), spec.strip())
    spec = text.strip()
    base = spec.removeprefix("openai:").partition("@")[0] if spec.startswith("openai:") else spec
    derived = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(base.rstrip("/")).name or base).strip("-")
    return TargetSpec(derived or "target", spec)


@dataclass(frozen=True)
class Gate:
    """`[TARGET:]METRIC=VALUE` from --fail-under / --fail-over."""

    metric: str
    value: float
    target: str | None = None

    def label(self) -> str:
        return f"{self.target}:{self.metric}" if self.target else self.metric


def parse_gate(text: str) -> Gate:
    left, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected [TARGET:]METRIC=VALUE, e.g. f1=0.5")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not a number") from None
    target, colon, metric = left.strip().rpartition(":")
    if not metric.strip():
        raise ValueError(f"{text!r}: no metric name before '='")
    return Gate(metric.strip(), number, target.strip() if colon else None)


class EvalConfig(ReadOptions):
    data: Path = Field(description="Data set (any format `slmforge data` reads).")
    target: list[str] = Field(
        description="NAME=SPEC to evaluate (repeat to compare): a model folder, an ONNX folder, "
        "FOLDER+ADAPTER, deploy:NAME or openai:MODEL@BASE_URL."
    )
    out: Path = Field(description="Output folder (rows.jsonl, summary.json, report.html/md).")
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="Reference metrics (repeat); 'all' adds embedding_similarity.",
    )
    judge: str | None = Field(
        None, description="Judge engine spec (e.g. openai:gpt-4o@URL); enables judge metrics."
    )
    judge_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_JUDGE_METRICS),
        description="Judge evaluators to run when --judge is given (repeat).",
    )
    judge_cache: Path | None = Field(
        None, description="JSONL cache of judge replies shared between runs."
    )
    context_field: str = Field("context", description="Key holding the grounding context.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N rows.")
    max_tokens: int = Field(256, gt=0, description="Most new tokens per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy.")
    seed: int = Field(0, description="Sampling seed and bootstrap seed.")
    concurrency: int = Field(4, gt=0, le=64, description="Requests in flight per remote target.")
    max_retries: int = Field(5, ge=0, le=20, description="Retries on 429/5xx per request.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of each remote request.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var with the remote API key.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples for CIs.")
    baseline: str | None = Field(
        None, description="Target the others are compared with (default: all pairs)."
    )
    fail_under: list[str] = Field(
        default_factory=list,
        description="[TARGET:]METRIC=VALUE: exit 1 when the mean is below (repeat).",
    )
    fail_over: list[str] = Field(
        default_factory=list,
        description="[TARGET:]METRIC=VALUE: exit 1 when the mean is above, e.g. refusal=0.1.",
    )
    safety: bool = Field(
        False,
        description="Add defect-rate metrics (defect_hate, ..., defect_any): the share of "
        "answers a safety classifier puts at or above --safety-threshold.",
    )
    safety_policy: Path | None = Field(
        None,
        description="Safety policy whose classifiers score answers (default: the blocklist).",
    )
    safety_threshold: Literal["low", "medium", "high"] = Field(
        "medium", description="Severity at which an answer counts as a defect."
    )
    device: Literal["cpu", "cuda", "mps"] = Field("cpu", description="Device of local targets.")
    resume: bool = Field(False, description="Continue an interrupted eval of the same options.")
    force: bool = Field(False, description="Replace OUT if it exists.")

    @field_validator("target")
    @classmethod
    def _check_targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one target, e.g. --target base=models/base")
        names = [target_spec(t).name for t in value]
        for spec in value:
            if not target_spec(spec).spec:
                raise ValueError(f"{spec!r}: NAME=SPEC needs a spec after '='")
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique, got {', '.join(names)}; use NAME=SPEC")
        return value

    @field_validator("fail_under", "fail_over")
    @classmethod
    def _check_gates(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_gate(text)
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> EvalConfig:
        names = [t.name for t in self.targets()]
        for _, gate in self.gates():
            if gate.target is not None and gate.target not in names:
                raise ValueError(f"gate {gate.label()}: no target {gate.target!r} ({names})")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"--baseline {self.baseline!r} is not a target ({', '.join(names)})")
        return self

    def targets(self) -> list[TargetSpec]:
        return [target_spec(t) for t in self.target]

    def gates(self) -> list[tuple[str, Gate]]:
        """(direction, gate) with direction "under" or "over"."""
        return [("under", parse_gate(t)) for t in self.fail_under] + [
            ("over", parse_gate(t)) for t in self.fail_over
        ]
