"""Options of `slmforge optimize` (Hugging Face model -> ONNX Runtime GenAI folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmforge.config import StrictModel
from slmforge.config.precisions import PRECISIONS, QUANT_ALGOS, OnnxPrecision, QuantAlgo

OnnxDevice = Literal["cpu", "cuda", "dml"]

# Defaults of --min-agreement and --max-kl per precision (config/precisions.py).
DEFAULT_MIN_AGREEMENT = {name: p.min_agreement for name, p in PRECISIONS.items()}
DEFAULT_MAX_KL = {name: p.max_kl for name, p in PRECISIONS.items()}


def adapter_spec(spec: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR` -> (name, folder); the name defaults to the folder's name."""
    name, sep, path = spec.partition("=")
    if not sep:
        folder = Path(spec)
        return folder.resolve().name, folder
    return name.strip(), Path(path)


class OptimizeConfig(StrictModel):
    model: str = Field(description="Model folder (or a hub id already in the local cache).")
    out: Path = Field(description="Output folder for the ONNX model.")
    adapter: list[str] = Field(
        default_factory=list,
        description="LoRA adapter as NAME=DIR or DIR (repeat for several; switchable at runtime).",
    )
    precision: OnnxPrecision = Field(
        "int4", description="Weight precision: " + ", ".join(PRECISIONS) + "."
    )
    device: OnnxDevice = Field("cpu", description="Execution provider the model is built for.")
    max_length: int = Field(
        2048, gt=0, description="Context length (prompt + reply) the KV cache is sized for."
    )
    merge_adapter: bool = Field(False, description="Bake the one --adapter into the weights.")
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Quantization block size for int4/int8."
    )
    int4_symmetric: bool = Field(True, description="Symmetric (int4) vs asymmetric (uint4).")
    int4_accuracy_level: int | None = Field(
        None, ge=1, le=4, description="MatMulNBits compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8."
    )
    int4_algo: QuantAlgo = Field(
        "default",
        description="Quantization method: "
        + "; ".join(f"{name}: {what}" for name, what in QUANT_ALGOS.items())
        + ".",
    )
    verify: bool = Field(True, description="Compare the ONNX model with PyTorch before keeping it.")
    verify_data: Path | None = Field(None, description="Prompts for verification (any data file).")
    verify_prompts: int = Field(8, gt=0, description="Prompts used for verification.")
    verify_tokens: int = Field(16, gt=0, description="Greedy steps compared per prompt.")
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fail below this top-1 agreement on positions where PyTorch is confident "
        "(default: fp32 1.0, fp16/int8 0.95, int4 0.9).",
    )
    max_kl: float | None = Field(
        None,
        ge=0,
        description="Fail above this mean KL divergence from PyTorch's next-token distribution "
        "(default: fp32 1e-4, fp16 5e-3, int8 0.02, int4 0.15, or twice the KL of PyTorch with "
        "its own weights rounded the same way, when that is larger).",
    )
    force: bool = Field(False, description="Replace OUT if it exists.")
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) checkpoints.")
    trust_remote_code: bool = Field(False)

    @field_validator("adapter")
    @classmethod
    def _check_adapters(cls, value: list[str]) -> list[str]:
        names = [adapter_spec(spec)[0] for spec in value]
        if any(not name for name in names):
            raise ValueError("each adapter is NAME=DIR or DIR; the name must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique, got {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> OptimizeConfig:
        if self.merge_adapter and len(self.adapter) != 1:
            raise ValueError("--merge-adapter needs exactly one --adapter")
        return self

    def adapters(self) -> dict[str, Path]:
        return dict(adapter_spec(spec) for spec in self.adapter)

    def kl_threshold(self) -> float:
        return self.max_kl if self.max_kl is not None else DEFAULT_MAX_KL[self.precision]

    def agreement_threshold(self) -> float:
        if self.min_agreement is not None:
            return self.min_agreement
        return DEFAULT_MIN_AGREEMENT[self.precision]
