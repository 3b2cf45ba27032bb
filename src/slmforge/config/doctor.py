"""Options of the fit check of `slmforge doctor --model ...`."""

from __future__ import annotations

from pydantic import Field

from slmforge.config import StrictModel
from slmforge.config.finetune import Device
from slmforge.config.finetune import Precision as TrainPrecision
from slmforge.config.methods import MethodName, methods_help
from slmforge.config.precisions import OnnxPrecision


class FitConfig(StrictModel):
    model: str = Field(description="Model folder or hub id to check (reads config.json only).")
    method: MethodName = Field("lora", description=f"Fine-tuning method: {methods_help()}.")
    precision: OnnxPrecision = Field(
        "int4", description="Inference weight precision (as slmforge optimize builds it)."
    )
    train_precision: TrainPrecision = Field(
        "auto",
        description="Training precision (auto: bf16 on CUDA; on CPU, bf16 for a bf16 checkpoint's "
        "adapter methods where the CPU computes bf16 natively, fp32 otherwise).",
    )
    batch_size: int = Field(4, gt=0, description="Rows per micro-batch while fine-tuning.")
    max_seq_len: int = Field(
        1024, gt=8, description="Tokens per row while fine-tuning; the inference context."
    )
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    device: Device = Field("auto", description="Device to check against (auto: the best here).")
    trust_remote_code: bool = Field(False, description="Allow a hub model's own config code.")
