"""Will it fit? Memory of every stage of the journey for one model, from its config alone.

Each stage has its estimate where the stage itself lives, so the check a command runs before
any work and the one `slmforge doctor` reports cannot disagree:
  finetune   `slmforge.train.memory.finetune_estimate` (`slmforge finetune` checks it on its
             real rows before loading weights; doctor assumes rows of --max-seq-len tokens,
             every one trained: an upper bound)
  merge      `slmforge.train.memory.merge_estimate` (the streaming merge of an adapter)
  optimize   `slmforge.optimize.memory.optimize_estimate` (the ONNX build, then verification;
             `slmforge optimize` refuses with it before any work)
  inference  `slmforge.doctor.inference.inference_estimate`: chat, serve and eval with the ONNX
             model that optimize builds
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.config.doctor import FitConfig
from slmforge.config.methods import get_finetune_method
from slmforge.config.optimize import OptimizeConfig
from slmforge.doctor.inference import INFERENCE_STAGES, inference_estimate
from slmforge.optimize.memory import OptimizeEstimate, optimize_estimate
from slmforge.train.memory import DTYPE_BYTES as _DTYPE_BYTES
from slmforge.train.memory import (
    GIB,
    MIB,
    Estimate,
    finetune_estimate,
    largest,
    merge_estimate,
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
    "checkpoint_size",
    "finetune_estimate",
    "inference_estimate",
    "merge_estimate",
    "read_shape",
    "shape_from_config",
    "trainable_params",
]

_MAX_BATCH = 4096
_OPTIMIZE = OptimizeConfig.model_fields  # optimize's defaults: verification on, its prompt count


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
    merge: Estimate | None = None  # None for full fine-tuning: there is no adapter to merge
    optimize: OptimizeEstimate | None = None
    checkpoint: int = 0  # bytes of the checkpoint's weight files (from parameters if remote)
    # merge and optimize run in this machine's memory whatever the device: what is free there
    host_available: int | None = None

    def fits(self, total: int) -> bool | None:
        return None if self.available is None else total <= self.available

    def host_fits(self, total: int) -> bool | None:
        return None if self.host_available is None else total <= self.host_available

    @property
    def finetune_fits(self) -> bool | None:
        return self.fits(self.finetune.total)

    @property
    def inference_fits(self) -> bool | None:
        return self.fits(self.inference.total)

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
            "merge": self._merge_json(),
            "optimize": self._optimize_json(),
            "inference": {
                "precision": cfg.precision,
                "context": cfg.max_seq_len,
                "stages": list(INFERENCE_STAGES),
                "components_bytes": self.inference.components,
                "total_bytes": self.inference.total,
                "fits": self.inference_fits,
            },
        }

    def _merge_json(self) -> dict[str, Any] | None:
        if self.merge is None:
            return None
        return {
            "dtype": self.shape.dtype or "fp32",
            "lora_r": self.config.lora_r,
            "components_bytes": self.merge.components,
            "total_bytes": self.merge.total,
            "fits": self.host_fits(self.merge.total),
        }

    def _optimize_json(self) -> dict[str, Any] | None:
        if self.optimize is None:
            return None
        verify = self.optimize.verify
        return {
            "precision": self.config.precision,
            "checkpoint_bytes": self.checkpoint,
            "build": {
                "components_bytes": self.optimize.build.components,
                "total_bytes": self.optimize.build.total,
            },
            "verify": None
            if verify is None
            else {"components_bytes": verify.components, "total_bytes": verify.total},
            "total_bytes": self.optimize.total,
            "fits": self.host_fits(self.optimize.total),
        }


def _problems(cfg: FitConfig, device: str, dtype: str) -> list[str]:
    problems = []
    if get_finetune_method(cfg.method).cuda_only and device != "cuda":
        problems.append(f"--method {cfg.method} needs a CUDA GPU; this check is for '{device}'")
    if device == "cpu" and dtype == "fp16":
        problems.append("--train-precision fp16 is not supported for training on CPU")
    return problems


def checkpoint_size(model: str, shape: ModelShape) -> int:
    """Bytes of a local folder's safetensors files; for a hub id (or a folder without them),
    its parameters in the checkpoint's dtype."""
    folder = Path(model).expanduser()
    files = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else 0
    return files or shape.params * _DTYPE_BYTES.get(shape.dtype or "fp32", 4)


def _optimize(cfg: FitConfig, shape: ModelShape, checkpoint: int) -> OptimizeEstimate:
    """`slmforge optimize --precision P` with its default verification."""
    return optimize_estimate(
        shape,
        cfg.precision,
        checkpoint,
        bool(_OPTIMIZE["verify"].default),
        int(_OPTIMIZE["verify_prompts"].default),
        int(_OPTIMIZE["verify_tokens"].default),
    )


def check_fit(
    cfg: FitConfig,
    device: str,
    available: int | None,
    shape: ModelShape | None = None,
    host_available: int | None = None,
) -> FitReport:
    """Estimate `cfg`'s memory on `device` (auto already resolved) against `available` bytes,
    and merge's and optimize's against `host_available` (this machine's free memory; the same as
    `available` for the CPU when not given); `shape` is read from the model's config unless
    given."""
    shape = shape or read_shape(cfg.model, cfg.trust_remote_code)
    dtype = train_dtype(cfg.train_precision, device, cfg.method, shape.dtype)

    def train(batch: int, seq: int) -> Estimate:
        return finetune_estimate(
            shape, cfg.method, dtype, device, batch, seq, cfg.lora_r, cfg.gradient_checkpointing
        )

    limit = available if available is not None else 0
    context = shape.context or cfg.max_seq_len
    adapter = get_finetune_method(cfg.method).adapter
    checkpoint = checkpoint_size(cfg.model, shape)
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
        merge=merge_estimate(shape, shape.dtype or "fp32", cfg.method, cfg.lora_r)
        if adapter
        else None,
        optimize=_optimize(cfg, shape, checkpoint),
        checkpoint=checkpoint,
        host_available=available if host_available is None and device == "cpu" else host_available,
    )
