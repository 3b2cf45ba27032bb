"""Options of `slmforge models ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slmforge.config import StrictModel

Arch = Literal["llama", "qwen2", "phi3", "mistral"]


class TinyModelConfig(StrictModel):
    arch: Arch = Field("llama", description="Architecture (and its chat format).")
    size: Literal["tiny", "small"] = Field(
        "tiny", description="tiny: ~1M params for tests; small: ~100M for benchmarks."
    )
    out: Path = Field(description="Output model folder.")
    pretrain_steps: int | None = Field(
        None, ge=0, description="Pretraining steps (0 = random weights; default per size)."
    )
    seed: int = Field(0, description="Seed for weights and data order.")
    force: bool = Field(False, description="Replace the output if it exists.")
