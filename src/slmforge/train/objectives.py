"""Training objectives: what a row is and what a micro-batch's loss is, for the one loop.

The loop (`train/loop.py`) owns the schedule: steps, micro-batches, gradient accumulation, data
parallelism, evaluation cadence, checkpoints and Ctrl-C. An objective owns the rest: it reads
and encodes the data into rows (opaque to the loop), says how many sequences and tokens a row
puts through the model (for length grouping, tokens/s and the memory estimate), computes a
micro-batch's summed loss and the metric sums that go with it, and turns summed metrics into
a metrics.jsonl record. Each step's loss is divided by the objective's `step_weight` over the
whole step (all micro-batches, all processes), so accumulation and DDP give one big batch's
update.

The names are the registry in `config/methods.py` (`OBJECTIVES`); `sft` is
`train/supervised.py`, the pair objectives (dpo, orpo, simpo) are `train/preference.py`, and
`train/sft.py` picks one for a run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from slmforge.config.finetune import FinetuneConfig
from slmforge.train.kept_positions import kept_only, trim_columns
from slmforge.train.shared_prefix import shared_length, shared_logits

if TYPE_CHECKING:
    from slmforge.train.loop import Plan

Messages = list[dict[str, Any]]


@dataclass
class ObjectiveData:
    """What an objective reads for a run: rows to train on, rows to evaluate, and held-out
    prompts with their reference answers (the manifest's sample generations)."""

    train: list[Any]
    evals: list[Any]
    prompts: list[tuple[Messages, str]] = field(default_factory=list)


class TrainObjective(ABC):
    """One objective's hooks. `sum_keys` names the metric sums `loss` returns (summed over
    micro-batches and processes in this order); `headline` is the metric the progress bar and
    the eval line show beside the loss."""

    name: str = ""
    sum_keys: tuple[str, ...] = ()
    headline: tuple[str, str] = ("", "")  # (metric key, label)

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.shared_tokens = 0  # token passes shared openings saved in training

    def check(self) -> None:
        """Fail fast on options this objective cannot honour, before anything loads."""
        return None

    @abstractmethod
    def load(self, tokenizer: Any) -> ObjectiveData:
        """Read `cfg.data` (and `cfg.eval_data`) and encode them into rows."""

    @abstractmethod
    def sequences(self, row: Any) -> list[tuple[int, int]]:
        """(tokens, trained tokens) of each sequence `row` puts through the model."""

    def row_tokens(self, row: Any) -> int:
        return sum(tokens for tokens, _ in self.sequences(row))

    @abstractmethod
    def step_weight(self, rows: list[Any]) -> float:
        """What a step's summed loss is divided by: its trained tokens, its pairs..."""

    def prepare(self, plan: Plan) -> None:
        """Called before the first step and before a checkpoint is loaded (the model is still
        the base then): e.g. precompute reference log-probabilities."""
        return None

    @abstractmethod
    def loss(
        self, plan: Plan, rows: list[Any], training: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss of a micro-batch (with its graph when gradients are on) and the metric
        sums named by `sum_keys`."""

    @abstractmethod
    def record(self, sums: dict[str, float], evaluation: bool) -> dict[str, float]:
        """A metrics.jsonl record from summed metrics (`eval_` names when `evaluation`)."""

    def shared_opening(self, plan: Plan, sequences: list[list[int]], keep: torch.Tensor) -> int:
        """Leading positions of a micro-batch's `sequences` to run once
        (`train/shared_prefix.py`), counted in the manifest when gradients are on (training,
        not evaluation or reference passes)."""
        if not plan.share_prefix:  # also off where the model cannot select logits
            return 0
        length = shared_length(sequences, keep)
        if torch.is_grad_enabled():
            self.shared_tokens += (len(sequences) - 1) * length
        return length

    def details(self) -> dict[str, Any]:
        """What the manifest's details say about the objective."""
        return {"objective": self.name, "shared_prefix_tokens_saved": self.shared_tokens}


def model_logits(
    plan: Plan,
    model: Any,
    batch: dict[str, torch.Tensor],
    keep: torch.Tensor | None,
    shared: int = 0,
) -> torch.Tensor:
    """The model's logits for a collated micro-batch under the run's autocast: at every
    position (batch x seq x vocab), or with `keep` only at its True positions (flattened to
    positions x vocab, a boolean `logits_to_keep`): with a vocabulary of 150k, logits of every
    position would be the step's largest tensor and a quarter of its work. With `keep`, what
    feeds no kept logit is not computed (`train/kept_positions.py`). `shared` leading
    positions, the same in every row, run once (`train/shared_prefix.py`; needs `keep`)."""
    inputs = {k: v.to(plan.device) for k, v in batch.items() if k != "labels"}
    if keep is not None:
        inputs, keep = trim_columns(inputs, keep)
    with torch.autocast(
        plan.device if plan.device != "mps" else "cpu",
        dtype=plan.autocast_dtype or torch.float32,
        enabled=plan.autocast_dtype is not None,
    ):
        if keep is None:
            return model(**inputs, use_cache=False).logits
        if shared:
            return shared_logits(model, inputs, keep, shared, plan.last_mlp)
        with kept_only(plan.last_mlp, keep):
            return model(**inputs, use_cache=False, logits_to_keep=keep).logits
