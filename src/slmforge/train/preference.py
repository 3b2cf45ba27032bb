"""Preference tuning: DPO, ORPO and SimPO on pairs (prompt, chosen answer, rejected answer).

A row is a pair: the chosen and the rejected conversation, each rendered with the chat template
(`train/collate.py`'s `encode`, labels on the answer tokens only; truncation keeps the head, the
prompt). A micro-batch puts its chosen and rejected sequences through the model in ONE forward
pass (concatenated along the batch) and sums each answer's token log-probabilities; the losses
are `train/pair_losses.py`. A step's loss is the mean over its pairs (all micro-batches, all
processes).

DPO's reference model is the base itself, never a second copy: for adapter methods (lora, dora,
qlora) the same model with its adapter switched off (`disable_adapter`, one extra no-grad
forward per micro-batch); for `full`, whose base changes as it trains, the reference
log-probabilities of every train and eval pair are computed in one no-grad pass before the
first step (the model at step 0 is the reference) and kept in the work folder, so `--resume`
reuses them. The manifest's `details.reference` says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from slmforge import progress
from slmforge.config.data import ReadOptions
from slmforge.config.finetune import FinetuneConfig
from slmforge.config.methods import get_finetune_method, get_objective
from slmforge.errors import DataError, InputError
from slmforge.train.collate import IGNORE, Encoded, collate, encode
from slmforge.train.distributed import unwrap
from slmforge.train.metrics import shifted_targets
from slmforge.train.objectives import ObjectiveData, TrainObjective, model_logits
from slmforge.train.pair_losses import PAIR_LOSSES, PairLoss, SequenceLogps
from slmforge.train.supervised import check_chat_template

if TYPE_CHECKING:
    from pathlib import Path

    from slmforge.data.preference import PreferenceExample
    from slmforge.train.loop import Plan

REFERENCE_FILE = "reference_logps.json"


@dataclass
class PairRow:
    """One encoded pair; `reference` holds its precomputed reference log-probabilities
    (chosen, rejected) when the run precomputes them."""

    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] | None = None


def predicted_tokens(encoded: Encoded) -> int:
    """Answer tokens the model predicts (a label at position 0 has no position before it)."""
    return sum(1 for label in encoded.labels[1:] if label != IGNORE)


def read_pairs(path: Path, cfg: FinetuneConfig, tokenizer: Any) -> list[PreferenceExample]:
    """The pairs of a data file, or a DataError naming its file and line: a supervised row
    where a pair belongs, an invalid pair, a prompt that leaves no room for an answer within
    --max-seq-len."""
    from slmforge.data.preference import (
        prompt_room_findings,
        read_preference_examples,
        shape_mismatch,
    )

    fields = {"input_format", "prompt_field", "response_field", "system_prompt"}
    options = ReadOptions(**cfg.model_dump(include=fields))
    if (wrong := shape_mismatch(path, "pairs", options)) is not None:
        raise DataError([wrong])
    pairs = read_preference_examples(path, options)
    if findings := prompt_room_findings(pairs, tokenizer, cfg.max_seq_len):
        raise DataError(findings)
    return pairs


def encode_pairs(
    tokenizer: Any, examples: list[PreferenceExample], cfg: FinetuneConfig
) -> list[PairRow]:
    """Each pair's chosen and rejected conversations, encoded with answer-only labels; a pair
    with no answer token of either side within --max-seq-len is skipped (with a warning)."""
    from slmforge.models.chat import stop_strings

    stops = stop_strings(tokenizer)
    rows, skipped = [], []
    for example in examples:
        chosen, rejected = (
            encode(
                tokenizer, messages, cfg.max_seq_len, False, cfg.text_template, stops, example.tools
            )
            for messages in (example.chosen_messages, example.rejected_messages)
        )
        if min(predicted_tokens(chosen), predicted_tokens(rejected)) < 1:
            skipped.append(f"{example.source}:{example.line}" if example.line else example.source)
            continue
        rows.append(PairRow(chosen, rejected))
    if skipped:
        progress.warn(
            f"{len(skipped)} pairs leave no answer token within --max-seq-len {cfg.max_seq_len} "
            f"and were skipped ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})"
        )
    return rows


def answer_logps(plan: Plan, model: Any, sequences: list[Encoded]) -> tuple[torch.Tensor, ...]:
    """Summed log-probabilities of each sequence's answer tokens, and their counts, from one
    forward pass over all of them (right-padded, no attention mask: see `collate`)."""
    pad = plan.tokenizer.pad_token_id or 0
    batch = collate([[s] for s in sequences], pad, packed=False)
    targets = shifted_targets(batch["labels"]).to(plan.device)
    keep = targets != IGNORE
    # chosen and rejected open with the same prompt: one pair shares all of it, several share
    # what their prompts have in common (a system prompt, tool definitions)
    shared = plan.objective.shared_opening(plan, [s.input_ids for s in sequences], keep)
    logits = model_logits(plan, model, batch, keep if plan.select_logits else None, shared)
    if plan.select_logits:  # logits at the kept positions only, row after row
        token_logps = -F.cross_entropy(logits.float(), targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        sums = torch.zeros(len(sequences), device=token_logps.device).index_add(
            0, rows, token_logps
        )
    else:
        flat = logits.reshape(-1, logits.size(-1)).float()
        token_logps = -F.cross_entropy(
            flat, targets.reshape(-1), ignore_index=IGNORE, reduction="none"
        )
        sums = token_logps.view(targets.shape).sum(1)
    return sums, keep.sum(1).to(sums.dtype)


def pair_logps(plan: Plan, model: Any, rows: list[PairRow]) -> SequenceLogps:
    """Chosen and rejected answers of a micro-batch in one forward pass."""
    count = len(rows)
    sums, tokens = answer_logps(plan, model, [r.chosen for r in rows] + [r.rejected for r in rows])
    return SequenceLogps(sums[:count], sums[count:], tokens[:count], tokens[count:])


class PairObjective(TrainObjective):
    """DPO, ORPO or SimPO (`cfg.objective`), one class: they differ only in the loss."""

    sum_keys = ("loss", "pairs", "hits", "margin", "chosen_logp", "rejected_logp")
    headline = ("reward_accuracy", "reward accuracy")

    def __init__(self, cfg: FinetuneConfig) -> None:
        super().__init__(cfg)
        self.name = cfg.objective
        self.traits = get_objective(cfg.objective)
        self.pair_loss = PAIR_LOSSES[cfg.objective]

    @property
    def reference_mode(self) -> str | None:
        """How the reference log-probabilities are had: adapter_disabled, precomputed, or None
        (no reference model)."""
        if not self.traits.reference:
            return None
        return "adapter_disabled" if get_finetune_method(self.cfg.method).adapter else "precomputed"

    def check(self) -> None:
        if self.cfg.train_on_prompt:
            raise InputError(
                f"--train-on-prompt does not apply to --objective {self.name}: preference "
                "objectives score the answers only"
            )

    def load(self, tokenizer: Any) -> ObjectiveData:
        cfg = self.cfg
        check_chat_template(cfg, tokenizer)
        train = read_pairs(cfg.data, cfg, tokenizer)
        evals = read_pairs(cfg.eval_data, cfg, tokenizer) if cfg.eval_data else []
        prompts = [(e.prompt, e.chosen[-1].get("content") or "") for e in evals]
        return ObjectiveData(
            encode_pairs(tokenizer, train, cfg), encode_pairs(tokenizer, evals, cfg), prompts
        )

    def sequences(self, row: PairRow) -> list[tuple[int, int]]:
        return [(len(e.input_ids), e.trained_tokens) for e in (row.chosen, row.rejected)]

    def step_weight(self, rows: list[PairRow]) -> float:
        return len(rows)

    def prepare(self, plan: Plan) -> None:
        if self.reference_mode == "precomputed":
            precompute_reference(plan)

    def _reference(self, plan: Plan, rows: list[PairRow]) -> SequenceLogps | None:
        if self.reference_mode is None:
            return None
        if self.reference_mode == "precomputed":
            values = torch.tensor([r.reference for r in rows], device=plan.device)
            ones = torch.ones(len(rows), device=plan.device)  # DPO scores sums, not means
            return SequenceLogps(values[:, 0], values[:, 1], ones, ones)
        model = unwrap(plan.model)
        with torch.no_grad(), model.disable_adapter():
            return pair_logps(plan, model, rows)

    def loss(
        self, plan: Plan, rows: list[PairRow], training: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        # The reference pass first: it holds nothing while the policy's activations live.
        reference = self._reference(plan, rows)
        result: PairLoss = self.pair_loss(pair_logps(plan, plan.model, rows), reference, self.cfg)
        loss_sum = result.losses.sum()
        return loss_sum, {
            "loss": loss_sum.item(),
            "pairs": len(rows),
            "hits": result.hits(),
            "margin": result.margin(),
            "chosen_logp": float(result.chosen_logp.sum()),
            "rejected_logp": float(result.rejected_logp.sum()),
        }

    def record(self, sums: dict[str, float], evaluation: bool) -> dict[str, float]:
        pairs = max(sums["pairs"], 1)
        prefix = "eval_" if evaluation else ""
        return {
            f"{prefix}loss": sums["loss"] / pairs,
            f"{prefix}reward_accuracy": sums["hits"] / pairs,
            f"{prefix}reward_margin": sums["margin"] / pairs,
            f"{prefix}chosen_logp": sums["chosen_logp"] / pairs,
            f"{prefix}rejected_logp": sums["rejected_logp"] / pairs,
        }

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = super().details()
        if self.traits.default_beta is not None:
            details["beta"] = self.cfg.effective_beta
        if self.name == "orpo":
            details["orpo_lambda"] = self.cfg.orpo_lambda
        if self.name == "simpo":
            details["simpo_gamma"] = self.cfg.simpo_gamma
        if self.reference_mode is not None:
            details["reference"] = self.reference_mode
        return details


# -- precomputed reference log-probabilities (full fine-tuning) ------------------------------------
def _fingerprint(plan: Plan, rows: list[PairRow]) -> str:
    """What the reference log-probabilities depend on: the base, the precision, every row."""
    digest = hashlib.sha256(f"{plan.cfg.model} {plan.precision}".encode())
    for row in rows:
        for side in (row.chosen, row.rejected):
            digest.update(repr((side.input_ids, side.labels)).encode())
    return digest.hexdigest()


@torch.no_grad()
def _compute_reference(plan: Plan, rows: list[PairRow]) -> list[float]:
    """Chosen and rejected reference log-probabilities of every row (2 per row, flat), each
    process computing its share."""
    ctx, size = plan.ctx, plan.cfg.batch_size
    values = [0.0] * (2 * len(rows))
    mine = list(range(ctx.rank, len(rows), ctx.world))
    was_training = plan.model.training
    plan.model.eval()
    with progress.task("Reference log-probabilities", total=len(mine)) as bar:
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            logps = pair_logps(plan, plan.model, [rows[i] for i in chunk])
            for index, chosen, rejected in zip(
                chunk, logps.chosen.tolist(), logps.rejected.tolist(), strict=True
            ):
                values[2 * index], values[2 * index + 1] = chosen, rejected
            bar.update(completed=start + len(chunk))
    plan.model.train(was_training)
    return ctx.all_sum(values)


def precompute_reference(plan: Plan) -> None:
    """Give every train and eval row its reference log-probabilities: from the work folder
    when a previous (interrupted) run of the same rows wrote them, else computed now."""
    from slmforge.artifacts import atomic_file

    rows: list[PairRow] = [*plan.train_rows, *plan.eval_rows]
    path = plan.work / REFERENCE_FILE
    fingerprint = _fingerprint(plan, rows)
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if saved is not None and saved.get("fingerprint") == fingerprint:
        values = saved["logps"]
        progress.info(f"reference log-probabilities: {path}")
    else:
        values = _compute_reference(plan, rows)
        if plan.ctx.is_main:
            with atomic_file(path, force=True) as temp:
                temp.write_text(
                    json.dumps({"fingerprint": fingerprint, "logps": values}), encoding="utf-8"
                )
        plan.ctx.barrier()
    for index, row in enumerate(rows):
        row.reference = (values[2 * index], values[2 * index + 1])
