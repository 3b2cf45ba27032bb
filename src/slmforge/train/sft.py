"""Supervised fine-tuning: setup -> fit -> save, one loop for LoRA, DoRA, QLoRA and full.

The loss is the mean over every trained token of an optimizer step (all micro-batches, all
processes), so gradient accumulation and data parallelism give the same update as one big
batch. Checkpoints go to `OUT.partial/` and the finished artifact is renamed into `OUT`.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmforge import progress
from slmforge.artifacts import artifact, check_output, source_of
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.formats import read_examples
from slmforge.errors import InputError, Interrupted
from slmforge.train import checkpoint as ckpt
from slmforge.train.collate import Encoded, collate, encode, epoch_order, pack, step_batches
from slmforge.train.distributed import DistContext, unwrap, wrap_ddp
from slmforge.train.memory import estimate
from slmforge.train.methods import MethodBase, get_method
from slmforge.train.metrics import MetricsLog, perplexity, token_loss_and_hits


@dataclass
class Plan:
    """Everything the loop needs, prepared by `setup`."""

    cfg: FinetuneConfig
    ctx: DistContext
    method: MethodBase
    device: str
    autocast_dtype: torch.dtype | None
    tokenizer: Any
    model: Any
    train_rows: list[list[Encoded]]
    eval_rows: list[list[Encoded]]
    eval_examples: list[Any]
    steps_per_epoch: int
    total_steps: int
    work: Path
    optimizer: Any = None
    scheduler: Any = None
    start_step: int = 0
    interrupted: bool = field(default=False)


def work_dir(out: Path) -> Path:
    """Where checkpoints of an unfinished run live, beside the final output."""
    return out.parent / f"{out.name}.partial"


def pick_device(requested: str) -> str:
    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible to torch")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _precision(cfg: FinetuneConfig, device: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype to load the base weights in, autocast dtype or None)."""
    precision = cfg.precision
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp32":
        return torch.float32, None
    if device == "cpu" and precision == "fp16":
        raise InputError("--precision fp16 is not supported for training on CPU; use fp32 or bf16")
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    # Full fine-tuning keeps fp32 master weights; adapters train over a half-precision base.
    return (torch.float32 if cfg.method == "full" else half), half


def check_paths(cfg: FinetuneConfig) -> Path:
    """Fail before loading anything: inputs exist, outputs may be written."""
    for path, option in ((cfg.data, "--data"), (cfg.eval_data, "--eval-data")):
        if path is not None and not Path(path).exists():
            raise InputError(f"{option}: {path} not found")
    check_output(cfg.out, cfg.force)
    work = work_dir(cfg.out)
    if work.exists() and not (cfg.resume or cfg.force):
        raise InputError(
            f"{work} holds an interrupted run; pass --resume to continue it "
            "or --force to start over"
        )
    if cfg.resume and ckpt.latest_checkpoint(work) is None:
        raise InputError(f"--resume: no checkpoint in {work}; run without --resume to start")
    return work


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


def _rows(encoded: list[Encoded], cfg: FinetuneConfig) -> list[list[Encoded]]:
    return pack(encoded, cfg.max_seq_len) if cfg.packing else [[e] for e in encoded]


def load_data(
    cfg: FinetuneConfig, tokenizer: Any
) -> tuple[list[Encoded], list[Encoded], list[Any]]:
    options = cfg.model_dump(
        include={"input_format", "prompt_field", "response_field", "system_prompt"}
    )
    from slmforge.config.data import ReadOptions

    read = ReadOptions(**options)
    train = read_examples(cfg.data, read)
    evals = read_examples(cfg.eval_data, read) if cfg.eval_data else []
    if cfg.text_template is None and not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{cfg.model} has no chat template; pass --text-template, e.g. "
            r"'<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>'"
        )
    return _encode_all(tokenizer, train, cfg), _encode_all(tokenizer, evals, cfg), evals


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


def setup(cfg: FinetuneConfig, ctx: DistContext) -> Plan:
    from slmforge.models.load import load_causal_lm, load_tokenizer

    method = get_method(cfg.method)
    device = pick_device(cfg.device)
    method.check(cfg, device)
    work = check_paths(cfg)
    if cfg.batch_size % ctx.world:
        raise InputError(f"--batch-size {cfg.batch_size} must be a multiple of --nproc {ctx.world}")
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    train, evals, eval_examples = load_data(cfg, tokenizer)
    rows = _rows(train, cfg)
    per_step = cfg.batch_size * cfg.grad_accum
    if len(rows) < per_step:
        raise InputError(
            f"{cfg.data}: {len(rows)} usable rows, fewer than one step "
            f"(--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum})"
        )
    steps_per_epoch = len(rows) // per_step
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    load_dtype, autocast_dtype = _precision(cfg, device)
    model = load_causal_lm(
        cfg.model,
        device=device,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        **method.load_kwargs(cfg, load_dtype),
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    torch.manual_seed(cfg.seed)  # adapter initialization is part of the seeded run
    model = method.prepare(model, cfg)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()  # trainable weights stay fp32 under autocast
    return Plan(
        cfg,
        ctx,
        method,
        device,
        autocast_dtype,
        tokenizer,
        model,
        rows,
        [[e] for e in evals],
        eval_examples,
        steps_per_epoch,
        total,
        work,
    )


def check_memory(plan: Plan) -> None:
    cfg = plan.cfg
    micro = cfg.batch_size // plan.ctx.world
    seq = max((sum(len(e.input_ids) for e in row) for row in plan.train_rows), default=1)
    guess = estimate(plan.model, micro, seq, plan.device, cfg.gradient_checkpointing)
    if guess.fits:
        progress.info(f"memory: {guess.describe()}")
        return
    message = f"this run may not fit in memory: {guess.describe()}"
    if cfg.strict_memory:
        raise InputError(message + "; lower --batch-size or --max-seq-len, or use LoRA")
    progress.warn(message)


def _forward(plan: Plan, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    inputs = {k: v.to(plan.device) for k, v in batch.items() if k != "labels"}
    with torch.autocast(
        plan.device if plan.device != "mps" else "cpu",
        dtype=plan.autocast_dtype or torch.float32,
        enabled=plan.autocast_dtype is not None,
    ):
        logits = plan.model(**inputs, use_cache=False).logits
    return token_loss_and_hits(logits, batch["labels"])


@torch.no_grad()
def evaluate(plan: Plan) -> dict[str, float]:
    """Eval loss, token accuracy and perplexity over the whole eval set (all ranks)."""
    plan.model.eval()
    mine = plan.eval_rows[plan.ctx.rank :: plan.ctx.world]
    loss_sum, hits, count = 0.0, 0, 0
    pad = plan.tokenizer.pad_token_id or 0
    for start in range(0, len(mine), plan.cfg.batch_size):
        batch = collate(mine[start : start + plan.cfg.batch_size], pad, packed=False)
        part_loss, part_hits, part_count = _forward(plan, batch)
        loss_sum, hits, count = loss_sum + part_loss.item(), hits + part_hits, count + part_count
    loss_sum, hits, count = plan.ctx.all_sum([loss_sum, hits, count])
    plan.model.train()
    loss = loss_sum / max(count, 1)
    return {
        "eval_loss": loss,
        "eval_token_accuracy": hits / max(count, 1),
        "eval_perplexity": perplexity(loss),
    }


class _Window:
    """Token-weighted averages between two metric records."""

    def __init__(self) -> None:
        self.loss_sum = self.hits = self.count = self.tokens = 0.0
        self.started = time.perf_counter()

    def add(self, loss_sum: float, hits: int, count: int, tokens: int) -> None:
        self.loss_sum += loss_sum
        self.hits += hits
        self.count += count
        self.tokens += tokens

    def record(self, ctx: DistContext) -> dict[str, float]:
        loss_sum, hits, count, tokens = ctx.all_sum(
            [self.loss_sum, self.hits, self.count, self.tokens]
        )
        elapsed = time.perf_counter() - self.started
        return {
            "loss": loss_sum / max(count, 1),
            "token_accuracy": hits / max(count, 1),
            "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
        }


def train_step(plan: Plan, micro_batches: list[list[list[Encoded]]], window: _Window) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the gradient norm."""
    ctx, cfg = plan.ctx, plan.cfg
    pad = plan.tokenizer.pad_token_id or 0
    # Every rank knows the whole step, so the global token count needs no communication.
    step_tokens = sum(sum(e.trained_tokens - 1 for e in row) for mb in micro_batches for row in mb)
    for index, micro in enumerate(micro_batches):
        mine = micro[ctx.rank :: ctx.world]
        batch = collate(mine, pad, packed=cfg.packing)
        syncing = index == len(micro_batches) - 1 or not ctx.enabled
        with _maybe_no_sync(plan.model, syncing):
            loss_sum, hits, count = _forward(plan, batch)
            # DDP averages gradients over ranks; scaling by world turns that into a global sum.
            (loss_sum * ctx.world / max(step_tokens, 1)).backward()
        window.add(loss_sum.item(), hits, count, sum(len(e.input_ids) for r in mine for e in r))
    grad_norm = 0.0
    if cfg.max_grad_norm > 0:
        grads = [p for p in plan.model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, cfg.max_grad_norm))
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
    window = _Window()
    epoch_steps: tuple[int, list[Any]] = (-1, [])
    with progress.task("Fine-tuning", total=plan.total_steps) as bar:
        bar.update(completed=plan.start_step)
        for step in range(plan.start_step, plan.total_steps):
            epoch, index = divmod(step, plan.steps_per_epoch)
            if epoch_steps[0] != epoch:
                order = epoch_order(len(plan.train_rows), cfg.seed, epoch)
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
                bar.update(completed=done, loss=record["loss"], acc=record["token_accuracy"])
                window = _Window()
            else:
                bar.update(completed=done)
            if plan.eval_rows and cfg.eval_every and done % cfg.eval_every == 0:
                _log(plan, log, {"step": done, **evaluate(plan)})
            if ctx.any_true(plan.interrupted):
                _save_checkpoint(plan, done, epoch)
                raise Interrupted(
                    f"interrupted at step {done}; checkpoint saved in {plan.work}; run the same "
                    "command with --resume to continue"
                )
            if cfg.save_every and done % cfg.save_every == 0 and done < plan.total_steps:
                _save_checkpoint(plan, done, epoch)
    if plan.eval_rows and not (cfg.eval_every and plan.total_steps % cfg.eval_every == 0):
        _log(plan, log, {"step": plan.total_steps, **evaluate(plan)})


def _log(plan: Plan, log: MetricsLog, record: dict[str, Any]) -> None:
    if plan.ctx.is_main:
        log.write(record)
        if "eval_loss" in record:
            progress.info(
                f"step {record['step']}: eval loss {record['eval_loss']:.4f}, "
                f"token accuracy {record['eval_token_accuracy']:.3f}"
            )


def _save_checkpoint(plan: Plan, step: int, epoch: int) -> None:
    if plan.ctx.is_main:
        state = ckpt.TrainState(step=step, epoch=epoch, config=_resume_key(plan.cfg))
        path = ckpt.save_checkpoint(
            plan.work, unwrap(plan.model), plan.optimizer, plan.scheduler, state
        )
        progress.info(f"checkpoint: {path}")
    plan.ctx.barrier()


def sample_generations(plan: Plan, count: int) -> list[dict[str, str]]:
    """Greedy answers of the trained model to a few held-out prompts, for the manifest."""
    from slmforge.runtime.engine import GenParams, complete
    from slmforge.runtime.torch_engine import TorchEngine

    examples = plan.eval_examples[:count]
    if not examples or plan.cfg.text_template is not None:
        return []
    engine = TorchEngine.from_loaded(unwrap(plan.model), plan.tokenizer)
    samples = []
    for example in examples:
        messages = example.messages[:-1]
        answer = complete(engine, messages, GenParams(max_tokens=64))
        samples.append(
            {
                "prompt": messages[-1]["content"],
                "reference": example.messages[-1]["content"],
                "output": answer.text,
            }
        )
    return samples


def save(plan: Plan, log: MetricsLog) -> Path:
    """Write the adapter (or full model) artifact with its manifest, metrics and plot."""
    from slmforge.models.chat import stop_strings
    from slmforge.train.metrics import plot_loss, summarize

    cfg = plan.cfg
    model = unwrap(plan.model)
    model.eval()
    records = log.records()
    samples = sample_generations(plan, cfg.samples)
    kind = "adapter" if plan.method.saves_adapter else "model"
    with artifact(cfg.out, kind, force=cfg.force) as art:
        plan.method.save(model, art.path)
        plan.tokenizer.save_pretrained(art.path)
        shutil.copy(log.path, art.path / "metrics.jsonl")
        plot_loss(records, art.path / "loss.png")
        manifest = art.manifest
        manifest.source = {
            "base_model": source_of(cfg.model, "model"),
            "data": source_of(cfg.data, "data"),
        }
        if cfg.eval_data:
            manifest.source["eval_data"] = source_of(cfg.eval_data, "data")
        manifest.config = cfg.model_dump(mode="json")
        manifest.metrics = summarize(records)
        manifest.chat_template = getattr(plan.tokenizer, "chat_template", None)
        manifest.stop = stop_strings(plan.tokenizer)
        manifest.details = {
            "method": cfg.method,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters()),
            "text_template": cfg.text_template,
            "samples": samples,
        }
        if cfg.merge:
            from slmforge.train.merge import merge_adapter

            merge_adapter(
                art.path,
                art.path / "merged",
                base=cfg.model,
                trust_remote_code=cfg.trust_remote_code,
                allow_pickle=cfg.allow_pickle,
            )
    return Path(cfg.out)


def finetune(cfg: FinetuneConfig) -> Path:
    """Fine-tune `cfg.model` on `cfg.data` and write the artifact to `cfg.out`."""
    ctx = DistContext.from_env()
    ctx.init(pick_device(cfg.device))
    try:
        plan = setup(cfg, ctx)
        check_memory(plan)
        if ctx.is_main:
            if cfg.force and plan.work.exists():
                shutil.rmtree(plan.work)
            plan.work.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        log = MetricsLog(plan.work / "metrics.jsonl")
        if ctx.is_main and not cfg.resume and log.path.exists():
            log.path.unlink()
        fit(plan, log)
        if ctx.is_main:
            save(plan, log)
            shutil.rmtree(plan.work, ignore_errors=True)
            progress.info(f"wrote {cfg.out}")
        ctx.barrier()
        return Path(cfg.out)
    finally:
        ctx.close()
