"""`--precision bf16-weights`: a frozen base kept in bf16, every product computed in fp32.

Why: adapter training leaves the base frozen, so its weights need no fp32 master copy, but a CPU
without native bf16 (AVX2, AVX-512 without BF16) multiplies bf16 many times slower than fp32
(docs/finetune.md). Holding the base in bf16 and casting each weight to fp32 just for its own
product halves the weight memory for ~10% of a step (the casts): a 3.8B model's LoRA run
needs ~8 GiB of weights instead of ~15, which is what lets it train in a 16-24 GiB laptop.

How: each frozen bf16 `nn.Linear` runs through `_Bf16Linear`, an autograd function that keeps
only the bf16 weight for backward and casts it again there, so no fp32 copy outlives its
product; large weights (an LM head of 150k rows) are cast `CHUNK_BYTES` at a time. Embeddings
return fp32 rows; the other frozen tensors (norms, biases) are small and become fp32.
Trainable tensors (adapters) are fp32 already.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_BYTES = 64 << 20  # the most fp32 weight one cast makes at a time


def _row_chunks(weight: torch.Tensor) -> list[tuple[int, int]]:
    rows = max(1, CHUNK_BYTES // (weight.shape[1] * 4))
    return [
        (start, min(start + rows, weight.shape[0])) for start in range(0, weight.shape[0], rows)
    ]


class _Bf16Linear(torch.autograd.Function):
    """x @ W.T with W frozen in bf16, computed in x's dtype (fp32) without keeping a cast."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        chunks = _row_chunks(weight)
        if len(chunks) == 1:
            return F.linear(x, weight.to(x.dtype))
        return torch.cat([F.linear(x, weight[a:b].to(x.dtype)) for a, b in chunks], dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        grad_x = None
        for a, b in _row_chunks(weight):
            part = grad[..., a:b] @ weight[a:b].to(grad.dtype)
            grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x, None


def _linear_forward(module: nn.Linear) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if module.weight.requires_grad or module.weight.dtype == x.dtype:
            return F.linear(x, module.weight.to(x.dtype), module.bias)
        out = _Bf16Linear.apply(x, module.weight)
        return out if module.bias is None else out + module.bias.to(out.dtype)

    return forward


def _embedding_forward(module: nn.Embedding, compute: torch.dtype) -> Any:
    original = module.forward

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return original(ids).to(compute)

    return forward


def keep_base_in_bf16(model: nn.Module, compute: torch.dtype = torch.float32) -> int:
    """Routes the frozen bf16 linears and embeddings of `model` through fp32 compute; returns
    how many weights stay in bf16. Call after the adapters exist (their weights are fp32)."""
    kept: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.bfloat16:
            continue
        if weight.requires_grad:
            continue
        if isinstance(module, nn.Linear):
            module.forward = _linear_forward(module)
        elif isinstance(module, nn.Embedding):
            module.forward = _embedding_forward(module, compute)
        else:
            continue
        kept.add(id(weight))
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point() and tensor.dtype != compute and id(tensor) not in kept:
            tensor.data = tensor.data.to(compute)  # norms, biases, rotary tables: small
    return len(kept)
