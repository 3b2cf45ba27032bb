"""Supervised fine-tuning: next-token loss on the assistant's answer tokens.

A row is a list of encoded examples (one, or several packed with `--packing`). The loss is the
mean over every trained token of an optimizer step (all micro-batches, all processes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from slmforge import progress
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.formats import read_examples
from slmforge.errors import InputError
from slmforge.train.collate import IGNORE, Encoded, collate, encode, pack
from slmforge.train.metrics import loss_and_hits, perplexity, shifted_targets
from slmforge.train.objectives import ObjectiveData, TrainObjective, model_logits

if TYPE_CHECKING:
    from slmforge.train.loop import Plan


def check_chat_template(cfg: FinetuneConfig, tokenizer: Any) -> None:
    if cfg.text_template is None and not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{cfg.model} has no chat template; pass --text-template, e.g. "
            r"'<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>'"
        )


def _encode_all(tokenizer: Any, examples: list[Any], cfg: FinetuneConfig) -> list[Encoded]:
    from slmforge.models.chat import stop_strings

    stops = stop_strings(tokenizer)
    encoded = []
    for example in examples:
        item = encode(
            tokenizer,
            example.messages,
            cfg.max_seq_len,
            cfg.train_on_prompt,
            cfg.text_template,
            stops,
            example.tools,
        )
        if item.trained_tokens > 1:
            encoded.append(item)
    dropped = len(examples) - len(encoded)
    if dropped:
        progress.warn(
            f"{dropped} examples have no assistant tokens within --max-seq-len "
            f"{cfg.max_seq_len} and were skipped"
        )
    return encoded


def load_data(
    cfg: FinetuneConfig, tokenizer: Any
) -> tuple[list[Encoded], list[Encoded], list[Any]]:
    """Encoded training and eval examples, and the eval examples as read."""
    from slmforge.config.data import ReadOptions

    options = cfg.model_dump(
        include={"input_format", "prompt_field", "response_field", "system_prompt"}
    )
    read = ReadOptions(**options)
    train = read_examples(cfg.data, read)
    evals = read_examples(cfg.eval_data, read) if cfg.eval_data else []
    check_chat_template(cfg, tokenizer)
    return _encode_all(tokenizer, train, cfg), _encode_all(tokenizer, evals, cfg), evals


class Supervised(TrainObjective):
    name = "sft"
    sum_keys = ("loss", "hits", "count")
    headline = ("token_accuracy", "token accuracy")

    def load(self, tokenizer: Any) -> ObjectiveData:
        cfg = self.cfg
        train, evals, eval_examples = load_data(cfg, tokenizer)
        rows = pack(train, cfg.max_seq_len) if cfg.packing else [[e] for e in train]
        prompts = [(e.messages[:-1], e.messages[-1]["content"]) for e in eval_examples]
        return ObjectiveData(rows, [[e] for e in evals], prompts)

    def sequences(self, row: list[Encoded]) -> list[tuple[int, int]]:
        return [(sum(len(e.input_ids) for e in row), sum(e.trained_tokens for e in row))]

    def step_weight(self, rows: list[list[Encoded]]) -> float:
        return sum(e.trained_tokens - 1 for row in rows for e in row)

    def loss(
        self, plan: Plan, rows: list[list[Encoded]], training: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss sum, hits and counted tokens of a micro-batch. The LM head runs only at the
        positions that predict a trained label where the model allows it."""
        pad = plan.tokenizer.pad_token_id or 0
        batch = collate(rows, pad, packed=self.cfg.packing and training)
        targets = shifted_targets(batch["labels"]).to(plan.device)
        keep = targets != IGNORE if plan.select_logits else None
        # rows hold one example each here: sharing is off with --packing
        shared = self.shared_opening(plan, [row[0].input_ids for row in rows], keep)
        logits = model_logits(plan, plan.model, batch, keep, shared)
        if keep is None:
            flat = logits.reshape(-1, logits.size(-1))
            loss_sum, hits, count = loss_and_hits(flat, targets.reshape(-1))
        else:
            loss_sum, hits, count = loss_and_hits(logits, targets[keep])
        return loss_sum, {"loss": loss_sum.item(), "hits": hits, "count": count}

    def record(self, sums: dict[str, float], evaluation: bool) -> dict[str, float]:
        count = max(sums["count"], 1)
        loss, accuracy = sums["loss"] / count, sums["hits"] / count
        if evaluation:
            return {
                "eval_loss": loss,
                "eval_token_accuracy": accuracy,
                "eval_perplexity": perplexity(loss),
            }
        return {"loss": loss, "token_accuracy": accuracy}
