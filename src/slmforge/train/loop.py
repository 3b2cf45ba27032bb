"""The training loop: optimizer steps, evaluation, metric records, checkpoints, Ctrl-C.

`train/sft.py` prepares a `Plan` (model, data rows, schedule) and calls `fit`; this module
only runs it, the same way for every method and objective: the objective
(`train/objectives.py`) computes each micro-batch's loss and metrics, the loop does the rest.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmforge import progress
from slmforge.config.finetune import FinetuneConfig
from slmforge.errors import Interrupted
from slmforge.train import checkpoint as ckpt
from slmforge.train.collate import epoch_order, length_grouped_order, step_batches
from slmforge.train.distributed import DistContext, unwrap, wrap_ddp
from slmforge.train.kept_positions import LastLayerMlp
from slmforge.train.methods import MethodBase
from slmforge.train.metrics import MetricsLog
from slmforge.train.objectives import TrainObjective


@dataclass
class Plan:
    """Everything the loop needs, prepared by `setup`."""

    cfg: FinetuneConfig
    ctx: DistContext
    method: MethodBase
    objective: TrainObjective
    device: str
    autocast_dtype: torch.dtype | None
    tokenizer: Any
    model: Any
    train_rows: list[Any]  # the objective's rows (opaque here)
    eval_rows: list[Any]
    eval_prompts: list[tuple[list[dict[str, Any]], str]]  # (prompt messages, reference answer)
    steps_per_epoch: int
    total_steps: int
    work: Path
    optimizer: Any = None
    scheduler: Any = None
    start_step: int = 0
    interrupted: bool = field(default=False)
    # Called on the main process after each periodic evaluation with (step, eval metrics); a
    # returned reason stops training there and the run is saved as usual (tune's pruning).
    on_eval: Callable[[int, dict[str, float]], str | None] | None = None
    stopped: dict[str, Any] | None = None  # {"step", "reason"} when on_eval stopped the run
    precision: str = "fp32"  # compute precision: fp32, bf16 or fp16
    gradient_checkpointing: bool = False  # as asked, or switched on by the memory check
    select_logits: bool = False  # the model computes logits at chosen positions only
    share_prefix: bool = False  # rows' common openings run once (train/shared_prefix.py)
    unshared: str | None = None  # why they do not, when they do not
    # the last layer's MLP at kept positions only (train/kept_positions.py), or why not
    last_mlp: LastLayerMlp | None = None
    whole_last_mlp: str | None = None


def _schedule(cfg: FinetuneConfig, optimizer: Any, total_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        span = max(total_steps - cfg.warmup_steps, 1)
        done = min((step - cfg.warmup_steps) / span, 1.0)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * done))
        if cfg.lr_scheduler == "linear":
            return 1.0 - done
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resume_key(cfg: FinetuneConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


@torch.no_grad()
def evaluate(plan: Plan) -> dict[str, float]:
    """The objective's eval metrics over the whole eval set (all ranks)."""
    plan.model.eval()
    objective = plan.objective
    mine = plan.eval_rows[plan.ctx.rank :: plan.ctx.world]
    sums = dict.fromkeys(objective.sum_keys, 0.0)
    for start in range(0, len(mine), plan.cfg.batch_size):
        _loss, part = objective.loss(plan, mine[start : start + plan.cfg.batch_size], False)
        for key in objective.sum_keys:
            sums[key] += part[key]
    totals = plan.ctx.all_sum([sums[key] for key in objective.sum_keys])
    plan.model.train()
    return objective.record(dict(zip(objective.sum_keys, totals, strict=True)), True)


class _Window:
    """The objective's metric sums (and tokens) between two metric records."""

    def __init__(self, objective: TrainObjective) -> None:
        self.objective = objective
        self.sums = dict.fromkeys(objective.sum_keys, 0.0)
        self.tokens = 0.0
        self.started = time.perf_counter()

    def add(self, sums: dict[str, float], tokens: int) -> None:
        for key in self.objective.sum_keys:
            self.sums[key] += sums[key]
        self.tokens += tokens

    def record(self, ctx: DistContext) -> dict[str, float]:
        keys = self.objective.sum_keys
        *totals, tokens = ctx.all_sum([*(self.sums[key] for key in keys), self.tokens])
        elapsed = time.perf_counter() - self.started
        return {
            **self.objective.record(dict(zip(keys, totals, strict=True)), False),
            "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
        }


def train_step(plan: Plan, micro_batches: list[list[Any]], window: _Window) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the gradient norm."""
    ctx, objective = plan.ctx, plan.objective
    # Every rank knows the whole step, so the global normaliser needs no communication.
    weight = objective.step_weight([row for micro in micro_batches for row in micro])
    for index, micro in enumerate(micro_batches):
        mine = micro[ctx.rank :: ctx.world]
        syncing = index == len(micro_batches) - 1 or not ctx.enabled
        with _maybe_no_sync(plan.model, syncing):
            loss_sum, sums = objective.loss(plan, mine, True)
            # DDP averages gradients over ranks; scaling by world turns that into a global sum.
            (loss_sum * ctx.world / max(weight, 1)).backward()
        window.add(sums, sum(objective.row_tokens(row) for row in mine))
    grad_norm = 0.0
    if plan.cfg.max_grad_norm > 0:
        grads = [p for p in plan.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, plan.cfg.max_grad_norm))
    plan.optimizer.step()
    plan.scheduler.step()
    plan.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _maybe_no_sync(model: Any, syncing: bool) -> Any:
    from contextlib import nullcontext

    return nullcontext() if syncing or not hasattr(model, "no_sync") else model.no_sync()


def _install_interrupt_handler(plan: Plan) -> Any:
    def handler(_signum: int, _frame: Any) -> None:
        plan.interrupted = True

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. a worker thread of the jobs server)
        return None


def fit(plan: Plan, log: MetricsLog) -> None:
    cfg, ctx = plan.cfg, plan.ctx
    trainable = [p for p in plan.model.parameters() if p.requires_grad]
    plan.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan.scheduler = _schedule(cfg, plan.optimizer, plan.total_steps)
    plan.objective.prepare(plan)  # before a checkpoint loads: the model is still the base
    latest = ckpt.latest_checkpoint(plan.work) if cfg.resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(
            latest, plan.model, plan.optimizer, plan.scheduler, _resume_key(cfg)
        )
        plan.start_step = state.step
        log.truncate_after(state.step) if ctx.is_main else None
        progress.info(f"resuming from {latest} (step {state.step})")
    plan.model = wrap_ddp(plan.model, ctx, plan.device)
    plan.model.train()
    if plan.start_step == 0 and plan.eval_rows:
        _log(plan, log, {"step": 0, **evaluate(plan)})
    previous = _install_interrupt_handler(plan)
    try:
        _loop(plan, log)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _loop(plan: Plan, log: MetricsLog) -> None:
    cfg, ctx = plan.cfg, plan.ctx
    window = _Window(plan.objective)
    epoch_steps: tuple[int, list[Any]] = (-1, [])
    with progress.task("Fine-tuning", total=plan.total_steps) as bar:
        bar.update(completed=plan.start_step)
        for step in range(plan.start_step, plan.total_steps):
            epoch, index = divmod(step, plan.steps_per_epoch)
            if epoch_steps[0] != epoch:
                order = _epoch_order(plan, epoch)
                epoch_steps = (
                    epoch,
                    step_batches(plan.train_rows, order, cfg.batch_size, cfg.grad_accum),
                )
            grad_norm = train_step(plan, epoch_steps[1][index], window)
            done = step + 1
            # The first step is logged on its own, so the record shows where training started.
            if done % cfg.log_every == 0 or done in (1, plan.total_steps):
                record = {
                    "step": done,
                    "epoch": round(step / plan.steps_per_epoch, 3),
                    **window.record(ctx),
                    "lr": plan.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                }
                _log(plan, log, record)
                headline = record[plan.objective.headline[0]]
                bar.update(completed=done, loss=record["loss"], acc=headline)
                window = _Window(plan.objective)
            else:
                bar.update(completed=done)
            if plan.eval_rows and cfg.eval_every and done % cfg.eval_every == 0:
                metrics = evaluate(plan)
                _log(plan, log, {"step": done, **metrics})
                if _stop_requested(plan, done, metrics):
                    break
            if ctx.any_true(plan.interrupted):
                _save_checkpoint(plan, done, epoch)
                raise Interrupted(
                    f"interrupted at step {done}; checkpoint saved in {plan.work}; run the same "
                    "command with --resume to continue"
                )
            if cfg.save_every and done % cfg.save_every == 0 and done < plan.total_steps:
                _save_checkpoint(plan, done, epoch)
    evaluated_last = cfg.eval_every and plan.total_steps % cfg.eval_every == 0
    if plan.eval_rows and not evaluated_last and plan.stopped is None:
        _log(plan, log, {"step": plan.total_steps, **evaluate(plan)})


def _epoch_order(plan: Plan, epoch: int) -> list[int]:
    cfg = plan.cfg
    if cfg.group_by_length and not cfg.packing:
        lengths = [plan.objective.row_tokens(row) for row in plan.train_rows]
        return length_grouped_order(lengths, cfg.seed, epoch, cfg.batch_size * cfg.grad_accum)
    return epoch_order(len(plan.train_rows), cfg.seed, epoch)


def _stop_requested(plan: Plan, step: int, metrics: dict[str, float]) -> bool:
    """Ask `plan.on_eval` (main process) whether to stop; every process gets the answer."""
    reason = plan.on_eval(step, metrics) if plan.on_eval and plan.ctx.is_main else None
    if not plan.ctx.any_true(reason is not None):
        return False
    plan.stopped = {"step": step, "reason": reason or "stopped by the main process"}
    progress.info(f"stopped at step {step}: {plan.stopped['reason']}")
    return True


def _log(plan: Plan, log: MetricsLog, record: dict[str, Any]) -> None:
    if plan.ctx.is_main:
        log.write(record)
        if "eval_loss" in record:
            key, label = plan.objective.headline
            progress.info(
                f"step {record['step']}: eval loss {record['eval_loss']:.4f}, "
                f"{label} {record['eval_' + key]:.3f}"
            )


def _save_checkpoint(plan: Plan, step: int, epoch: int) -> None:
    if plan.ctx.is_main:
        state = ckpt.TrainState(step=step, epoch=epoch, config=_resume_key(plan.cfg))
        path = ckpt.save_checkpoint(
            plan.work, unwrap(plan.model), plan.optimizer, plan.scheduler, state
        )
        progress.info(f"checkpoint: {path}")
    plan.ctx.barrier()
