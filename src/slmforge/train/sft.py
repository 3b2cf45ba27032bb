"""Fine-tuning: setup -> fit -> save, one loop for every method (LoRA, DoRA, QLoRA, full) and
every objective (SFT, DPO, ORPO, SimPO).

The method (`train/methods.py`) prepares the model and says what to save; the objective
(`train/objectives.py`) reads the data into rows and computes each micro-batch's loss. The
loss is normalized over a whole optimizer step (all micro-batches, all processes), so gradient
accumulation and data parallelism give the same update as one big batch. Checkpoints go to
`OUT.partial/` and the finished artifact is renamed into `OUT`.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slmforge import progress
from slmforge.artifacts import artifact, check_output, source_of
from slmforge.config.finetune import FinetuneConfig
from slmforge.config.methods import get_finetune_method, get_objective
from slmforge.errors import InputError, ModelError
from slmforge.native_caches import bound_native_caches
from slmforge.train import checkpoint as ckpt
from slmforge.train.bf16_weights import keep_base_in_bf16
from slmforge.train.distributed import DistContext, unwrap
from slmforge.train.kept_positions import last_layer_mlp
from slmforge.train.loop import Plan, fit
from slmforge.train.memory import (
    RunShape,
    available_bytes,
    check_run,
    local_processes,
    train_dtype,
)
from slmforge.train.methods import get_method
from slmforge.train.metrics import MetricsLog
from slmforge.train.objectives import TrainObjective
from slmforge.train.preference import PairObjective
from slmforge.train.shape import ModelShape, read_shape
from slmforge.train.shared_prefix import why_not_shared
from slmforge.train.supervised import Supervised
from slmforge.train.supervised import load_data as load_data  # jobs/spec.py counts packed rows

EvalHook = Callable[[int, dict[str, float]], "str | None"]


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


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_precision(cfg: FinetuneConfig, device: str, checkpoint: str | None) -> str:
    """fp32, bf16 or fp16: `--precision`, or for auto what `train_dtype` picks for this device,
    method and checkpoint dtype (a bf16 checkpoint keeps a bf16 base under adapters on CPU)."""
    precision = train_dtype(cfg.precision, device, cfg.method, checkpoint)
    if device == "cuda" and cfg.precision == "auto" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
    if device == "cpu" and precision == "fp16":
        raise InputError("--precision fp16 is not supported for training on CPU; use fp32 or bf16")
    traits = get_finetune_method(cfg.method)
    if precision == "bf16-weights" and (not traits.adapter or traits.base_bits is not None):
        raise InputError(
            f"--precision bf16-weights keeps a frozen base in bf16; --method {cfg.method} "
            + ("trains every weight" if not traits.adapter else "quantizes its base")
            + ": use fp32 or bf16"
        )
    return precision


def torch_dtypes(method: str, precision: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype to load the base weights in, autocast dtype or None)."""
    if precision == "fp32":
        return torch.float32, None
    if precision == "bf16-weights":  # stored in bf16, computed in fp32 (train/bf16_weights.py)
        return torch.bfloat16, None
    half = _TORCH_DTYPES[precision]
    # Full fine-tuning keeps fp32 master weights; adapters train over a half-precision base.
    adapter = get_finetune_method(method).adapter
    return (half if adapter else torch.float32), half


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


def selects_logits(model: Any) -> bool:
    """Whether the model computes logits at chosen positions only (a boolean `logits_to_keep`,
    which transformers' `slice_logits_to_keep` handles; custom model code may not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def _model_shape(cfg: FinetuneConfig) -> ModelShape | None:
    try:
        return read_shape(cfg.model, cfg.trust_remote_code)
    except ModelError as exc:  # not a decoder shape the estimate knows: train without it
        progress.warn(f"memory: no estimate for this model ({exc})")
        return None


def run_shape(
    cfg: FinetuneConfig,
    ctx: DistContext,
    objective: TrainObjective,
    precision: str,
    device: str,
    rows: list[Any],
    gradient_checkpointing: bool,
) -> RunShape:
    """What the memory estimate needs to know of this run: its real rows, not --max-seq-len.
    A preference pair puts its chosen and rejected answers through the model together, so a
    micro-batch holds twice its rows as sequences."""
    sequences = [objective.sequences(row) for row in rows]
    return RunShape(
        method=cfg.method,
        dtype=precision,
        device=device,
        batch=cfg.batch_size // ctx.world * max(len(s) for s in sequences),
        seq=max(tokens for s in sequences for tokens, _ in s),
        rank=cfg.lora_r,
        gradient_checkpointing=gradient_checkpointing,
        processes=ctx.world,
        # transformers' own models compute logits only where a label is predicted
        trained=None
        if cfg.trust_remote_code
        else max(trained for s in sequences for _, trained in s),
    )


def memory_estimate(plan: Plan) -> dict[str, Any] | None:
    """The memory check's estimate for the run as it ran (gradient checkpointing as decided),
    for the manifest: benchmarks compare it with the measured peak."""
    cfg = plan.cfg
    try:
        shape = read_shape(cfg.model, cfg.trust_remote_code)
    except ModelError:  # the check said so before training
        return None
    run = run_shape(
        cfg,
        plan.ctx,
        plan.objective,
        plan.precision,
        plan.device,
        plan.train_rows,
        plan.gradient_checkpointing,
    )
    estimate = run.estimate(shape)
    return {
        "total_bytes": estimate.total,
        "components_bytes": estimate.components,
        "batch_size": run.batch,
        "longest_row_tokens": run.seq,
        "most_trained_tokens": run.trained,
    }


def memory_check(
    cfg: FinetuneConfig,
    ctx: DistContext,
    objective: TrainObjective,
    shape: ModelShape | None,
    precision: str,
    device: str,
    rows: list[Any],
) -> bool:
    """Check the run's memory estimate before any weights load; returns whether to train with
    gradient checkpointing (switched on when only that makes the run fit)."""
    if shape is None:
        return cfg.gradient_checkpointing
    run = run_shape(cfg, ctx, objective, precision, device, rows, cfg.gradient_checkpointing)
    available = available_bytes(device)
    if available is not None and device == "cpu":
        available //= local_processes(ctx.world)  # processes on one machine share its memory
    if available is not None and ctx.enabled:  # one figure, so every rank decides alike
        available = int(ctx.all_sum([available if ctx.is_main else 0])[0])
    return check_run(shape, run, available, cfg.strict_memory)


def train_objective(cfg: FinetuneConfig) -> TrainObjective:
    """The hooks of `cfg.objective`: pair objectives share one class, parametrized by loss."""
    return PairObjective(cfg) if get_objective(cfg.objective).pairs else Supervised(cfg)


def setup(cfg: FinetuneConfig, ctx: DistContext) -> Plan:
    from slmforge.models.load import load_causal_lm, load_tokenizer

    method = get_method(cfg.method)
    objective = train_objective(cfg)
    device = pick_device(cfg.device)
    method.check(cfg, device)
    objective.check()
    work = check_paths(cfg)
    if cfg.batch_size % ctx.world:
        raise InputError(f"--batch-size {cfg.batch_size} must be a multiple of --nproc {ctx.world}")
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    data = objective.load(tokenizer)
    rows = data.train
    per_step = cfg.batch_size * cfg.grad_accum
    if len(rows) < per_step:
        raise InputError(
            f"{cfg.data}: {len(rows)} usable rows, fewer than one step "
            f"(--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum})"
        )
    steps_per_epoch = len(rows) // per_step
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    shape = _model_shape(cfg)
    precision = compute_precision(cfg, device, shape.dtype if shape else None)
    checkpointing = memory_check(cfg, ctx, objective, shape, precision, device, rows)
    load_dtype, autocast_dtype = torch_dtypes(cfg.method, precision)
    model = load_causal_lm(
        cfg.model,
        device=device,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        **method.load_kwargs(cfg, load_dtype),
    )
    if checkpointing:
        model.activation_checkpointing_enable()
    torch.manual_seed(cfg.seed)  # adapter initialization is part of the seeded run
    model = method.prepare(model, cfg.model_copy(update={"gradient_checkpointing": checkpointing}))
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()  # trainable weights stay fp32 under autocast
    if precision == "bf16-weights":
        keep_base_in_bf16(model)
    select = selects_logits(model)
    unshared = why_not_shared(cfg, model, ctx.enabled, checkpointing, select)
    last_mlp, whole_last_mlp = last_layer_mlp(model, checkpointing, select)
    return Plan(
        cfg,
        ctx,
        method,
        objective,
        device,
        autocast_dtype,
        tokenizer,
        model,
        rows,
        data.evals,
        data.prompts,
        steps_per_epoch,
        total,
        work,
        precision=precision,
        gradient_checkpointing=checkpointing,
        select_logits=select,
        share_prefix=unshared is None,
        unshared=unshared,
        last_mlp=last_mlp,
        whole_last_mlp=whole_last_mlp,
    )


def sample_generations(plan: Plan, count: int) -> list[dict[str, str]]:
    """Greedy answers of the trained model to a few held-out prompts, for the manifest."""
    from slmforge.runtime.engine import GenParams, complete
    from slmforge.runtime.torch_engine import TorchEngine

    prompts = plan.eval_prompts[:count]
    if not prompts or plan.cfg.text_template is not None:
        return []
    engine = TorchEngine.from_loaded(unwrap(plan.model), plan.tokenizer)
    samples = []
    for messages, reference in prompts:
        answer = complete(engine, messages, GenParams(max_tokens=64))
        samples.append(
            {"prompt": messages[-1]["content"], "reference": reference, "output": answer.text}
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
            **plan.objective.details(),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters()),
            "text_template": cfg.text_template,
            "precision": plan.precision,
            "gradient_checkpointing": plan.gradient_checkpointing,
            "share_prefix": "on" if plan.share_prefix else f"off: {plan.unshared}",
            "last_layer_mlp": "kept positions"
            if plan.last_mlp
            else f"whole: {plan.whole_last_mlp}",
            "memory_estimate": memory_estimate(plan),
            "samples": samples,
        }
        if plan.stopped is not None:
            manifest.details["stopped_early"] = plan.stopped
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


def finetune(cfg: FinetuneConfig, on_eval: EvalHook | None = None) -> Path:
    """Fine-tune `cfg.model` on `cfg.data` and write the artifact to `cfg.out`.

    `on_eval(step, metrics)` is called after each `--eval-every` evaluation; returning a reason
    stops the run there (it is saved with `details.stopped_early`), as `slmforge tune` does to
    prune a bad trial."""
    bound_native_caches()  # for callers other than the CLI; no effect once oneDNN has run
    ctx = DistContext.from_env()
    ctx.init(pick_device(cfg.device))
    try:
        plan = setup(cfg, ctx)
        plan.on_eval = on_eval
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
