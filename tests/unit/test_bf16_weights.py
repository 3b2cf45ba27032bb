"""`--precision bf16-weights`: a frozen bf16 base computed in fp32 gives fp32's results."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slmforge.train import bf16_weights
from slmforge.train.bf16_weights import keep_base_in_bf16


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 24)
        self.adapter = nn.Linear(16, 24, bias=False)  # trainable, fp32
        self.head = nn.Linear(24, 40, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(ids))
        return self.head(torch.relu(self.proj(x) + self.adapter(x)))


def _models() -> tuple[Tiny, Tiny]:
    torch.manual_seed(0)
    reference = Tiny()
    for name, param in reference.named_parameters():
        param.requires_grad = name.startswith("adapter")
        if not param.requires_grad:  # the values a bf16 checkpoint holds
            param.data = param.data.to(torch.bfloat16).float()
    kept = copy.deepcopy(reference)
    for param in kept.parameters():
        if not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    return reference, kept


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 16 * 4 * 7])  # one cast; casts of 7 rows
def test_a_bf16_base_computed_in_fp32_matches_fp32(monkeypatch, chunk_bytes) -> None:
    monkeypatch.setattr(bf16_weights, "CHUNK_BYTES", chunk_bytes)
    reference, kept = _models()
    assert keep_base_in_bf16(kept) == 3  # embedding, proj, head
    assert kept.proj.weight.dtype == kept.head.weight.dtype == kept.embed.weight.dtype
    assert kept.proj.weight.dtype == torch.bfloat16
    assert kept.norm.weight.dtype == kept.proj.bias.dtype == kept.adapter.weight.dtype
    assert kept.adapter.weight.dtype == torch.float32
    ids = torch.randint(0, 40, (3, 5))
    outputs = []
    for model in (reference, kept):
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), ids.reshape(-1))
        loss.backward()
        outputs.append((logits.dtype, logits.detach(), model.adapter.weight.grad.clone()))
    assert outputs[1][0] == torch.float32
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1][2], outputs[0][2], rtol=1e-5, atol=1e-5)
    assert kept.head.weight.grad is None  # frozen: no gradient made for it
