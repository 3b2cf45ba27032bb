"""Options of the GGUF export (Hugging Face model -> llama.cpp / Ollama folder).

The precisions and their verification bars live here, one entry each, so CLI choices, the
writer's tensor types and the bars all read the same table. `config/optimize.py` imports this
module (for `--format gguf`); both parse `--adapter` with `config/adapters.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmforge.config import StrictModel
from slmforge.config.adapters import adapter_spec, checked_adapter_names


@dataclass(frozen=True)
class GgufPrecision:
    name: str
    what: str
    min_agreement: float  # default --min-agreement (top-1 on confident positions)
    max_kl: float  # default --max-kl (mean KL from PyTorch)
    needs_llama_cpp: bool = False  # quantized by llama.cpp's own quantizer, not gguf-py


GGUF_PRECISIONS: dict[str, GgufPrecision] = {
    p.name: p
    for p in (
        GgufPrecision("f16", "16-bit floats (norms and biases stay f32)", 0.95, 5e-3),
        GgufPrecision("q8_0", "8-bit blocks of 32, one f16 scale each", 0.95, 0.02),
        GgufPrecision("q4_0", "4-bit blocks of 32; embeddings and LM head at q8_0", 0.9, 0.15),
        GgufPrecision(
            "q4_k_m", "llama.cpp's 4-bit k-quant mix (needs llama-cpp-python)", 0.9, 0.15, True
        ),
    )
}

GgufPrecisionName = Literal[tuple(GGUF_PRECISIONS)]  # type: ignore[valid-type]
# `slmforge optimize --format gguf` takes the ONNX names too (its default is int4)
GGUF_ALIASES = {"int4": "q4_0", "int8": "q8_0", "fp16": "f16"}


class GgufConfig(StrictModel):
    model: str = Field(description="Model folder (Hugging Face layout, safetensors).")
    out: Path = Field(description="Output folder: model-PRECISION.gguf, adapters, Modelfile.")
    precision: GgufPrecisionName = Field(
        "q4_0",
        description="Weight precision: "
        + "; ".join(f"{p.name}: {p.what}" for p in GGUF_PRECISIONS.values())
        + ".",
    )
    adapter: list[str] = Field(
        default_factory=list,
        description="LoRA adapter as NAME=DIR or DIR (repeat; each becomes NAME.gguf).",
    )
    merge_adapter: bool = Field(False, description="Bake the one --adapter into the weights.")
    verify: bool = Field(True, description="Compare the GGUF weights with PyTorch before keeping.")
    verify_data: Path | None = Field(None, description="Prompts for verification (any data file).")
    verify_prompts: int = Field(4, gt=0, description="Prompts used for verification.")
    verify_tokens: int = Field(12, gt=0, description="Greedy steps compared per prompt.")
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fail below this top-1 agreement on positions where PyTorch is confident "
        "(default: f16/q8_0 0.95, q4_0/q4_k_m 0.9).",
    )
    max_kl: float | None = Field(
        None,
        ge=0,
        description="Fail above this mean KL divergence from PyTorch "
        "(default: f16 5e-3, q8_0 0.02, q4_0/q4_k_m 0.15).",
    )
    force: bool = Field(False, description="Replace OUT if it exists.")

    @field_validator("adapter")
    @classmethod
    def _check_adapters(cls, value: list[str]) -> list[str]:
        names = checked_adapter_names(value)
        bad = [name for name in names if not name.replace("-", "").replace("_", "").isalnum()]
        if bad:  # the name becomes a file name and an Ollama model suffix
            raise ValueError(f"adapter names may use letters, digits, - and _ only: {bad[0]!r}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> GgufConfig:
        if self.merge_adapter and len(self.adapter) != 1:
            raise ValueError("--merge-adapter needs exactly one --adapter")
        return self

    def adapters(self) -> dict[str, Path]:
        return dict(adapter_spec(spec) for spec in self.adapter)

    def kl_threshold(self) -> float:
        return self.max_kl if self.max_kl is not None else GGUF_PRECISIONS[self.precision].max_kl

    def agreement_threshold(self) -> float:
        if self.min_agreement is not None:
            return self.min_agreement
        return GGUF_PRECISIONS[self.precision].min_agreement
