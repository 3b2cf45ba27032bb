"""The training loss and token accuracy equal the textbook shifted computation."""

from __future__ import annotations

import torch

from slmforge.train.collate import IGNORE
from slmforge.train.metrics import token_loss_and_hits


def reference(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
    shifted_labels = labels[:, 1:].reshape(-1)
    keep = shifted_labels != IGNORE
    loss = torch.nn.functional.cross_entropy(
        shifted_logits[keep], shifted_labels[keep], reduction="sum"
    )
    hits = (shifted_logits[keep].argmax(-1) == shifted_labels[keep]).sum()
    return float(loss), int(hits), int(keep.sum())


def test_matches_the_shifted_reference_with_masked_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 17, generator=generator, requires_grad=True)
    labels = torch.randint(0, 17, (3, 9), generator=generator)
    labels[0, :4] = IGNORE  # a prompt
    labels[2, 6:] = IGNORE  # padding
    labels[1, 3] = logits[1, 2].argmax()  # one sure hit
    loss, hits, count = token_loss_and_hits(logits, labels)
    ref_loss, ref_hits, ref_count = reference(logits.detach(), labels)
    assert abs(float(loss) - ref_loss) < 1e-4
    assert (hits, count) == (ref_hits, ref_count)
    loss.backward()  # the loss carries the graph
    assert logits.grad is not None and float(logits.grad[0, :3].abs().sum()) == 0.0


def test_bf16_logits_are_scored_in_float32() -> None:
    logits = torch.randn(2, 5, 11).to(torch.bfloat16)
    labels = torch.randint(0, 11, (2, 5))
    loss, _, count = token_loss_and_hits(logits, labels)
    assert loss.dtype == torch.float32 and count == 8
