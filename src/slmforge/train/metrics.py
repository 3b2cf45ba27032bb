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


# Per-record metrics beside the loss that the manifest summarizes, when a run records them.
SUMMARIZED = ("token_accuracy", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last training loss and metrics, first/last eval figures, for the manifest."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    summary: dict[str, Any] = {}
    if train:
        first, last = train[0], train[-1]
        summary |= {"train_loss_first": first["loss"], "train_loss_last": last["loss"]}
        for key in (k for k in SUMMARIZED if k in last):
            summary |= {f"{key}_first": first.get(key), f"{key}_last": last[key]}
        summary |= {"tokens_per_s": last.get("tokens_per_s"), "steps": last["step"]}
    if evals:
        first, last = evals[0], evals[-1]
        summary |= {"eval_loss_initial": first["eval_loss"], "eval_loss_final": last["eval_loss"]}
        for key in (f"eval_{k}" for k in SUMMARIZED if f"eval_{k}" in last):
            summary |= {f"{key}_initial": first.get(key), f"{key}_final": last[key]}
        if "eval_perplexity" in last:
            summary["eval_perplexity_final"] = last["eval_perplexity"]
    return summary


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [step for step, _ in points], [value for _, value in points]


def plot_loss(records: list[dict[str, Any]], path: Path) -> None:
    """loss.png: training and eval loss against steps; beside them, for preference objectives,
    reward accuracy (train and eval) and the reward margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = any("reward_accuracy" in r or "eval_reward_accuracy" in r for r in records)
    fig, axes = plt.subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 7, 4))
    loss_ax = axes[0] if rewards else axes
    loss_ax.plot(*_series(records, "loss"), label="train loss")
    if any("eval_loss" in r for r in records):
        loss_ax.plot(*_series(records, "eval_loss"), "o-", label="eval loss")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="best")
    if rewards:
        _plot_rewards(axes[1], records)
    for ax in axes if rewards else [axes]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_rewards(ax: Any, records: list[dict[str, Any]]) -> None:
    ax.plot(*_series(records, "reward_accuracy"), label="train reward accuracy")
    if any("eval_reward_accuracy" in r for r in records):
        ax.plot(*_series(records, "eval_reward_accuracy"), "o-", label="eval reward accuracy")
    ax.set_ylabel("reward accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="upper left")  # both curves usually rise: the corners off the diagonal
    margin_ax = ax.twinx()
    margin_ax.plot(*_series(records, "reward_margin"), "--", color="tab:gray", label="margin")
    if any("eval_reward_margin" in r for r in records):
        margin_ax.plot(
            *_series(records, "eval_reward_margin"), "s--", color="tab:red", label="eval margin"
        )
    margin_ax.set_ylabel("reward margin (chosen - rejected)")
    margin_ax.legend(loc="lower right")
