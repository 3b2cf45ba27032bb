"""Options of the fit check of `slmforge doctor --model ...`."""

from __future__ import annotations

from pydantic import Field

from slmforge.config import StrictModel
from slmforge.config.finetune import Device
from slmforge.config.finetune import Precision as TrainPrecision
from slmforge.config.methods import MethodName, methods_help
from slmforge.config.precisions import OnnxPrecision


class FitConfig(StrictModel):
    model: str = Field(
        description="Model folder or hub id to check (reads config.json, and the sizes of a "
        "folder's safetensors files; loads no weights)."
    )
    method: MethodName = Field("lora", description=f"Fine-tuning method: {methods_help()}.")
    precision: OnnxPrecision = Field(
        "int4",
        description="Weight precision of the ONNX model slmforge optimize builds: the optimize "
        "and inference estimates.",
    )
    train_precision: TrainPrecision = Field(
        "auto",
        description="Training precision (auto: bf16 on CUDA; on CPU, bf16 for a bf16 checkpoint's "
        "adapter methods where the CPU computes bf16 natively, fp32 otherwise).",
    )
    batch_size: int = Field(4, gt=0, description="Rows per micro-batch while fine-tuning.")
    max_seq_len: int = Field(
        1024,
        gt=8,
        description="Tokens per row while fine-tuning (each one trained: an upper bound), and "
        "the inference context (prompt + reply).",
    )
    lora_r: int = Field(
        16, gt=0, description="LoRA rank of the adapter trained, merged and served."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Estimate fine-tuning with activations recomputed in backward (finetune "
        "switches it on by itself when only that fits).",
    )
    device: Device = Field(
        "auto",
        description="Device to check fine-tuning and inference against (auto: the best here); "
        "merge and optimize are checked against this machine's memory.",
    )
    trust_remote_code: bool = Field(False, description="Allow a hub model's own config code.")
