"""Options of `slmforge models ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from slmforge.config import StrictModel

Arch = Literal["llama", "qwen2", "phi3", "mistral"]


class TinyModelConfig(StrictModel):
    arch: Arch = Field("llama", description="Architecture (and its chat format).")
    size: Literal["tiny", "bench", "small"] = Field(
        "tiny",
        description="tiny: ~1M params for tests; bench: ~4M, trained until quantization and "
        "preference quality mean something (~12 min); small: ~100M for speed benchmarks.",
    )
    out: Path = Field(description="Output model folder.")
    pretrain_steps: int | None = Field(
        None, ge=0, description="Pretraining steps (0 = random weights; default per size)."
    )
    seed: int = Field(0, description="Seed for weights and data order.")
    force: bool = Field(False, description="Replace the output if it exists.")


def _shape_names() -> tuple[str, ...]:
    from slmforge.config.shapes import SHAPES

    return tuple(SHAPES)


class InitModelConfig(StrictModel):
    like: str = Field(
        description="Public model whose exact shape to copy: " + ", ".join(_shape_names()) + "."
    )
    out: Path = Field(description="Output model folder.")
    layers: int | None = Field(
        None, ge=1, description="Keep only this many decoder layers (full width and vocabulary)."
    )
    dtype: Literal["bf16", "fp32"] = Field("bf16", description="Weight dtype on disk.")
    seed: int = Field(0, description="Seed for the random weights.")
    force: bool = Field(False, description="Replace the output if it exists.")

    @field_validator("like")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in _shape_names():
            raise ValueError(f"unknown model {value!r} (known: {', '.join(_shape_names())})")
        return value
