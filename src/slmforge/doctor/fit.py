"""Will it fit? Memory for fine-tuning and for inference of a model, from its config alone.

Fine-tuning: `slmforge.train.memory` holds the estimate (and `slmforge finetune` checks it
before loading weights); this module reports it next to the inference estimate.

Inference (ONNX Runtime GenAI, as `slmforge optimize` builds it): weights at the chosen
precision (int4/int8 blocks of 32 with one scale each; embeddings stay in the float I/O dtype),
the KV cache for the whole context, the prompt's logits and one layer's working set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmforge.config.doctor import FitConfig
from slmforge.config.methods import get_finetune_method
from slmforge.train.memory import DTYPE_BYTES as _DTYPE_BYTES
from slmforge.train.memory import (
    GIB,
    MIB,
    Estimate,
    finetune_estimate,
    largest,
    train_dtype,
    trainable_params,
)
from slmforge.train.shape import ModelShape, read_shape, shape_from_config

__all__ = [
    "GIB",
    "MIB",
    "Estimate",
    "FitReport",
    "ModelShape",
    "check_fit",
    "finetune_estimate",
    "inference_estimate",
    "read_shape",
    "shape_from_config",
    "trainable_params",
]

_INFER_RUNTIME = {"cpu": 150 * MIB, "mps": 150 * MIB, "cuda": 512 * MIB}  # onnxruntime(-genai)
_BLOCK = 32  # int4/int8 quantization block of the ONNX builder (one scale per block)
_MAX_BATCH = 4096


# -- inference -----------------------------------------------------------------------------------
def inference_estimate(shape: ModelShape, precision: str, device: str, context: int) -> Estimate:
    """One sequence of `context` tokens with an ONNX Runtime GenAI model of `precision`."""
    io_bytes = 4 if device == "cpu" and precision in ("fp32", "int4", "int8") else 2
    if precision in ("int4", "int8"):
        bits = 4 if precision == "int4" else 8
        per_weight = (bits + io_bytes * 8 / _BLOCK) / 8  # plus one scale per block
        head = shape.head_params or shape.embedding_params  # a tied head is quantized apart
        weights = shape.embedding_params * io_bytes
        weights += int(
            (shape.params - shape.embedding_params - shape.head_params + head) * per_weight
        )
    else:
        weights = shape.params * _DTYPE_BYTES[precision]
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * context * io_bytes
    working = context * (shape.vocab * 4 + (2 * shape.intermediate + 4 * shape.hidden) * io_bytes)
    return Estimate(
        {
            "runtime": _INFER_RUNTIME.get(device, _INFER_RUNTIME["cpu"]),
            "weights": weights,
            "kv_cache": kv_cache,
            "activations": working,
        }
    )


# -- the check -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitReport:
    """The fit check's result; `available` is None when the device is not on this machine."""

    config: FitConfig
    shape: ModelShape
    device: str
    available: int | None
    dtype: str
    trainable: int
    finetune: Estimate
    inference: Estimate
    max_batch_size: int
    max_seq_len: int
    problems: list[str]

    @property
    def finetune_fits(self) -> bool | None:
        return None if self.available is None else self.finetune.total <= self.available

    @property
    def inference_fits(self) -> bool | None:
        return None if self.available is None else self.inference.total <= self.available

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "model": cfg.model,
            "device": self.device,
            "available_bytes": self.available,
            "parameters": self.shape.params,
            "problems": self.problems,
            "finetune": {
                "method": cfg.method,
                "precision": self.dtype,
                "batch_size": cfg.batch_size,
                "max_seq_len": cfg.max_seq_len,
                "gradient_checkpointing": cfg.gradient_checkpointing,
                "trainable_params": self.trainable,
                "components_bytes": self.finetune.components,
                "total_bytes": self.finetune.total,
                "fits": self.finetune_fits,
                "largest_batch_size": self.max_batch_size,
                "largest_seq_len": self.max_seq_len,
            },
            "inference": {
                "precision": cfg.precision,
                "context": cfg.max_seq_len,
                "components_bytes": self.inference.components,
                "total_bytes": self.inference.total,
                "fits": self.inference_fits,
            },
        }


def _problems(cfg: FitConfig, device: str, dtype: str) -> list[str]:
    problems = []
    if get_finetune_method(cfg.method).cuda_only and device != "cuda":
        problems.append(f"--method {cfg.method} needs a CUDA GPU; this check is for '{device}'")
    if device == "cpu" and dtype == "fp16":
        problems.append("--train-precision fp16 is not supported for training on CPU")
    return problems


def check_fit(
    cfg: FitConfig, device: str, available: int | None, shape: ModelShape | None = None
) -> FitReport:
    """Estimate `cfg`'s memory on `device` (auto already resolved) against `available` bytes;
    `shape` is read from the model's config unless given."""
    shape = shape or read_shape(cfg.model, cfg.trust_remote_code)
    dtype = train_dtype(cfg.train_precision, device, cfg.method, shape.dtype)

    def train(batch: int, seq: int) -> Estimate:
        return finetune_estimate(
            shape,
            cfg.method,
            dtype,
            device,
            batch,
            seq,
            cfg.lora_r,
            cfg.gradient_checkpointing,
        )

    limit = available if available is not None else 0
    context = shape.context or cfg.max_seq_len
    return FitReport(
        config=cfg,
        shape=shape,
        device=device,
        available=available,
        dtype=dtype,
        trainable=trainable_params(shape, cfg.method, cfg.lora_r),
        finetune=train(cfg.batch_size, cfg.max_seq_len),
        inference=inference_estimate(shape, cfg.precision, device, cfg.max_seq_len),
        max_batch_size=largest(lambda b: train(b, cfg.max_seq_len).total <= limit, 1, _MAX_BATCH),
        max_seq_len=largest(lambda s: train(cfg.batch_size, s).total <= limit, 1, context),
        problems=_problems(cfg, device, dtype),
    )
