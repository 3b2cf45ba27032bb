"""Options of `slmforge app compare` (the same prompts through a local and a cloud model)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slmforge.config.data import ReadOptions


class AppCompareConfig(ReadOptions):
    data: Path = Field(description="Prompts (any format `slmforge data` reads).")
    local: str = Field(
        min_length=1,
        description="The on-device model: an ONNX or model folder, FOLDER+ADAPTER, or any "
        "engine spec.",
    )
    cloud: str = Field(
        min_length=1,
        description="The cloud model: openai:MODEL@BASE_URL, profile:NAME, deploy:NAME, or "
        "any engine spec.",
    )
    out: Path = Field(description="Output folder (compare.md, compare.jsonl, summary.json, eval/).")
    similarity: str = Field(
        "embedding_similarity",
        description="Metric for how alike the two answers are (embedding_similarity, f1, chrf, "
        "rougeL, ... any eval metric that compares two texts).",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["length", "refusal"],
        description="Eval metrics of each side's answers (repeat; reference metrics need "
        "references in the data).",
    )
    judge: str | None = Field(
        None, description="Judge engine spec; adds which answer the judge prefers, and why."
    )
    limit: int | None = Field(None, gt=0, description="Compare only the first N prompts.")
    max_tokens: int = Field(256, gt=0, description="Most new tokens per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy.")
    seed: int = Field(0, description="Sampling seed and bootstrap seed.")
    concurrency: int = Field(
        1,
        gt=0,
        le=64,
        description="Requests in flight to a remote model or judge (1 keeps each answer's "
        "speed free of queueing behind the others).",
    )
    max_retries: int = Field(5, ge=0, le=20, description="Retries on 429/5xx per request.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of each remote request.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var with the remote API key.")
    device: Literal["cpu", "cuda", "mps"] = Field("cpu", description="Device of local models.")
    resume: bool = Field(
        False,
        description="Continue an interrupted compare from OUT.partial/: answers and judge "
        "replies it already has are not asked for again.",
    )
    force: bool = Field(False, description="Replace OUT if it exists.")
