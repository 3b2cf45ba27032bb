"""The fit check's findings: one `Check` per stage of the journey (finetune, merge, optimize,
inference for chat/serve/eval), each with what it needs, what is available and, when it does
not fit, what would."""

from __future__ import annotations

from typing import Any

from slmforge.config.methods import get_finetune_method, quantized_adapter_method
from slmforge.doctor.fit import FitReport, finetune_estimate, largest
from slmforge.doctor.report import Check
from slmforge.doctor.system import gib

_ELSEWHERE = "run the check on the machine that has the device, or with --device auto"


def _available(fit: FitReport, host: bool = False) -> str:
    available = fit.host_available if host else fit.available
    if available is None:
        if host:
            return "; this machine's free memory is unknown"
        return f"; there is no {fit.device} device here to compare with"
    return f" of {gib(available)} available" + ("" if host else f" on {fit.device}")


def _checkpointed_batch(fit: FitReport) -> int:
    """The largest batch at --max-seq-len that fits with gradient checkpointing (0: none)."""
    cfg, limit = fit.config, fit.available or 0

    def total(batch: int) -> int:
        return finetune_estimate(
            fit.shape, cfg.method, fit.dtype, fit.device, batch, cfg.max_seq_len, cfg.lora_r, True
        ).total

    return max(largest(lambda b: total(b) <= limit, 1, max(cfg.batch_size, 1)), 0)


def _finetune_fix(fit: FitReport) -> str:
    """What would fit; `slmforge finetune` switches gradient checkpointing on by itself when
    only that fits, so the batch and length offered are those with it on."""
    cfg = fit.config
    options = []
    batch = _checkpointed_batch(fit)
    if 1 <= batch < cfg.batch_size:
        options.append(
            f"--batch-size {batch} (the most at {cfg.max_seq_len} tokens, with gradient "
            "checkpointing, which finetune switches on by itself)"
        )
    elif fit.max_seq_len >= 1:
        options.append(f"--max-seq-len {fit.max_seq_len} (the most at batch {cfg.batch_size})")
    quantized = quantized_adapter_method()
    if quantized and get_finetune_method(cfg.method).base_bits is None and fit.device == "cuda":
        options.append(f"--method {quantized.name}")
    if not options:
        return "use a smaller model or a machine with more memory"
    return "try " + ", ".join(options) + ", or a smaller model"


def _checkpointing_note(fit: FitReport) -> Check | None:
    """A run that fits only with gradient checkpointing: finetune turns it on and says so."""
    cfg = fit.config
    if cfg.gradient_checkpointing or fit.available is None:
        return None
    checkpointed = finetune_estimate(
        fit.shape, cfg.method, fit.dtype, fit.device, cfg.batch_size, cfg.max_seq_len,
        cfg.lora_r, True,
    )  # fmt: skip
    if checkpointed.total > fit.available:
        return None
    summary = (
        f"{cfg.method} fine-tuning ({fit.dtype}, batch {cfg.batch_size} x {cfg.max_seq_len}) "
        f"needs ~{gib(fit.finetune.total)}{_available(fit)}; with gradient checkpointing, "
        f"which slmforge finetune switches on by itself, ~{gib(checkpointed.total)}: it fits, "
        "with slower steps"
    )
    fix = "accept the slower steps"
    if fit.max_batch_size >= 1:
        fix += (
            f", or --batch-size {fit.max_batch_size} (with --grad-accum to keep the rows per "
            "step) to train without recomputing"
        )
    elif fit.max_seq_len >= 1:
        fix += f", or --max-seq-len {fit.max_seq_len} to train without recomputing"
    return Check("fit.finetune", "warning", summary, fix)


def _finetune_check(fit: FitReport, details: dict[str, Any]) -> Check:
    cfg = fit.config
    what = f"{cfg.method} fine-tuning ({fit.dtype}, batch {cfg.batch_size} x {cfg.max_seq_len})"
    summary = f"{what} needs ~{gib(fit.finetune.total)}{_available(fit)}"
    if fit.problems:
        fix = "change the options named, or run on a machine that has what they need"
        return Check("fit.finetune", "error", "; ".join(fit.problems), fix, details)
    if fit.available is None:
        return Check("fit.finetune", "warning", summary, _ELSEWHERE, details)
    if not fit.finetune_fits:
        note = _checkpointing_note(fit)
        if note is not None:
            note.details = details
            return note
        return Check("fit.finetune", "error", summary, _finetune_fix(fit), details)
    largest_text = (
        f"; largest batch at {cfg.max_seq_len} tokens: {fit.max_batch_size}, longest rows "
        f"at batch {cfg.batch_size}: {fit.max_seq_len} tokens"
    )
    return Check("fit.finetune", "ok", summary + largest_text, details=details)


def _merge_check(fit: FitReport) -> Check | None:
    if fit.merge is None:
        return None
    details = fit.to_json()["merge"]
    summary = (
        f"merge (streamed one tensor at a time) needs ~{gib(fit.merge.total)}"
        f"{_available(fit, host=True)}"
    )
    fits = fit.host_fits(fit.merge.total)
    if fits is None:
        return Check("fit.merge", "warning", summary, _ELSEWHERE, details)
    if fits:
        return Check("fit.merge", "ok", summary, details=details)
    fix = (
        "skip the merge: slmforge optimize --adapter NAME=ADAPTER builds the base with the "
        "adapter, or use a machine with more memory"
    )
    return Check("fit.merge", "error", summary, fix, details)


def _optimize_fix(fit: FitReport) -> str:
    estimate, available = fit.optimize, fit.host_available or 0
    assert estimate is not None
    options = []
    if estimate.verify is not None and estimate.build.total <= available:
        options.append(f"--no-verify (the build alone needs ~{gib(estimate.build.total)})")
    if fit.config.precision != "int4":
        options.append("--precision int4 (packs the weights smallest)")
    options.append(f"a machine with {gib(estimate.total)} or more free memory")
    return "try " + " or ".join(options)


def _optimize_check(fit: FitReport) -> Check | None:
    if fit.optimize is None:
        return None
    details = fit.to_json()["optimize"]
    phases = f"build ~{gib(fit.optimize.build.total)}"
    if fit.optimize.verify is not None:
        phases += f", verification ~{gib(fit.optimize.verify.total)}"
    summary = (
        f"{fit.config.precision} ONNX build ({phases}) needs ~{gib(fit.optimize.total)}"
        f"{_available(fit, host=True)}"
    )
    fits = fit.host_fits(fit.optimize.total)
    if fits is None:
        return Check("fit.optimize", "warning", summary, _ELSEWHERE, details)
    if fits:
        return Check("fit.optimize", "ok", summary, details=details)
    return Check("fit.optimize", "error", summary, _optimize_fix(fit), details)


def _inference_check(fit: FitReport, details: dict[str, Any]) -> Check:
    cfg = fit.config
    summary = (
        f"{cfg.precision} inference (chat, serve and eval of the ONNX model, one "
        f"{cfg.max_seq_len}-token sequence) needs ~{gib(fit.inference.total)}{_available(fit)}"
    )
    if fit.available is None:
        return Check("fit.inference", "warning", summary, _ELSEWHERE, details)
    if fit.inference_fits:
        return Check("fit.inference", "ok", summary, details=details)
    if cfg.precision != "int4":
        fix = "use --precision int4 and a shorter context"
    else:
        fix = "use a smaller model or a shorter context (slmforge optimize --max-length)"
    return Check("fit.inference", "error", summary, fix, details)


def fit_checks(fit: FitReport) -> list[Check]:
    """The findings in the journey's order."""
    details = fit.to_json()
    checks = [
        _finetune_check(fit, details["finetune"]),
        _merge_check(fit),
        _optimize_check(fit),
        _inference_check(fit, details["inference"]),
    ]
    return [check for check in checks if check is not None]
