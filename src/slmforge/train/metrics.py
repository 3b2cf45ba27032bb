"""Training metrics: loss and token accuracy from logits, metrics.jsonl, and the loss plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from slmforge.train.collate import IGNORE


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """The token each position must predict: the next label, IGNORE at the end of a row."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)


def loss_and_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Summed cross-entropy of `logits` (positions x vocabulary) against `targets` (positions;
    IGNORE is skipped), correct argmax predictions, and counted positions.

    Accuracy looks only at the counted positions, without building a graph."""
    if logits.dtype != torch.float32:
        logits = logits.float()
    targets = targets.to(logits.device)
    loss_sum = torch.nn.functional.cross_entropy(
        logits, targets, ignore_index=IGNORE, reduction="sum"
    )
    counted = (targets != IGNORE).nonzero().squeeze(-1)
    with torch.no_grad():
        hits = (logits[counted].argmax(-1) == targets[counted]).sum().item()
    return loss_sum, int(hits), int(counted.numel())


def token_loss_and_hits(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """Summed next-token cross-entropy, correct argmax predictions, and counted tokens, from
    the logits of every position (batch x sequence x vocabulary).

    The labels are shifted, not the logits: slicing the logits would copy the largest tensor
    of the step and keep the copy alive for the backward pass. Training computes logits only
    where a label is predicted (`loss_and_hits` on `logits_to_keep` positions); this is the
    path for models that cannot.
    """
    vocab = logits.size(-1)
    return loss_and_hits(logits.reshape(-1, vocab), shifted_targets(labels).reshape(-1))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class MetricsLog:
    """Appends one JSON record per logging step; survives a resume by truncating to a step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last training loss and accuracy, first/last eval figures, for the manifest."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    summary: dict[str, Any] = {}
    if train:
        summary |= {
            "train_loss_first": train[0]["loss"],
            "train_loss_last": train[-1]["loss"],
            "token_accuracy_first": train[0].get("token_accuracy"),
            "token_accuracy_last": train[-1].get("token_accuracy"),
            "tokens_per_s": train[-1].get("tokens_per_s"),
            "steps": train[-1]["step"],
        }
    if evals:
        summary |= {
            "eval_loss_initial": evals[0]["eval_loss"],
            "eval_loss_final": evals[-1]["eval_loss"],
            "eval_token_accuracy_initial": evals[0]["eval_token_accuracy"],
            "eval_token_accuracy_final": evals[-1]["eval_token_accuracy"],
            "eval_perplexity_final": evals[-1]["eval_perplexity"],
        }
    return summary


def plot_loss(records: list[dict[str, Any]], path: Path) -> None:
    """loss.png: training loss and eval loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax.plot(
            [r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
