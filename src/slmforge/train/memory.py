"""A memory estimate for fine-tuning, checked before training starts.

Rough but conservative: weights + (gradients + AdamW moments) of trainable parameters +
activations kept for the backward pass + the fp32 logits the loss needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
# Bytes of saved activations per token, per layer, per hidden unit, for a decoder block in
# mixed or full precision without activation checkpointing (order of Korthikanti et al. 2022).
_ACTIVATION_BYTES_PER_UNIT = 34


@dataclass
class MemoryEstimate:
    weights: int
    optimizer: int
    activations: int
    available: int | None
    device: str

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def describe(self) -> str:
        avail = "unknown" if self.available is None else f"{self.available / GIB:.1f} GiB"
        return (
            f"estimated {self.total / GIB:.2f} GiB (weights {self.weights / GIB:.2f}, "
            f"grads+optimizer {self.optimizer / GIB:.2f}, "
            f"activations {self.activations / GIB:.2f}) "
            f"vs {avail} available on {self.device}"
        )


def available_bytes(device: str) -> int | None:
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def estimate(
    model: Any, micro_batch: int, seq_len: int, device: str, gradient_checkpointing: bool = False
) -> MemoryEstimate:
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    config = model.config
    hidden = getattr(config, "hidden_size", 0)
    layers = getattr(config, "num_hidden_layers", 0)
    vocab = getattr(config, "vocab_size", 0)
    act_layers = 1 if gradient_checkpointing else layers
    tokens = micro_batch * seq_len
    activations = tokens * hidden * act_layers * _ACTIVATION_BYTES_PER_UNIT
    activations += tokens * vocab * 4 * 3  # logits, their fp32 copy, and the gradient
    return MemoryEstimate(
        weights=weights,
        optimizer=trainable * (4 + 8),  # fp32 gradient + two AdamW moments
        activations=activations,
        available=available_bytes(device),
        device=device,
    )
