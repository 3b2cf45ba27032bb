"""`slmforge doctor`: run every registered check, then the fit check when a model is given."""

from __future__ import annotations

from typing import Any

from slmforge import progress
from slmforge.config.doctor import FitConfig
from slmforge.config.methods import get_finetune_method, quantized_adapter_method
from slmforge.doctor.facts import Facts
from slmforge.doctor.fit import FitReport, check_fit, read_shape
from slmforge.doctor.report import CHECKS, Check, CheckFn, Report
from slmforge.doctor.system import gib

# Importing the check modules registers their checks; their order is the report's order.
# isort: off
from slmforge.doctor import system  # noqa: F401
from slmforge.doctor import packages  # noqa: F401

# isort: on


def _run(check_id: str, fn: CheckFn, facts: Facts) -> list[Check]:
    try:
        result = fn(facts)
    except Exception as exc:  # one odd platform detail must not hide every other finding
        summary = f"the {check_id} check failed: {exc.__class__.__name__}: {exc}"
        fix = "please report this with the output of: slmforge --debug doctor --json"
        return [Check(check_id, "error", summary.splitlines()[0], fix)]
    return result if isinstance(result, list) else [result]


def fit_device(requested: str, facts: Facts) -> tuple[str, int | None]:
    """The device the fit check is for, and its free memory (None: not on this machine)."""
    accelerator = facts.accelerator
    best = {"cuda": "cuda", "rocm": "cuda", "mps": "mps"}.get(accelerator, "cpu")
    device = best if requested == "auto" else requested
    if device == "cpu":
        return device, facts.memory.available
    if device == "mps":
        return device, facts.memory.available if accelerator == "mps" else None
    gpu = next((g for g in facts.gpus if g.backend in ("cuda", "rocm")), None)
    return device, gpu.memory_free if gpu else None


def _finetune_fix(fit: FitReport) -> str:
    cfg = fit.config
    options = []
    if fit.max_batch_size >= 1:
        options.append(f"--batch-size {fit.max_batch_size} (the most at {cfg.max_seq_len} tokens)")
    elif fit.max_seq_len >= 1:
        options.append(f"--max-seq-len {fit.max_seq_len} (the most at batch {cfg.batch_size})")
    if not cfg.gradient_checkpointing:
        options.append("--gradient-checkpointing")
    quantized = quantized_adapter_method()
    if quantized and get_finetune_method(cfg.method).base_bits is None and fit.device == "cuda":
        options.append(f"--method {quantized.name}")
    if not options:
        return "use a smaller model or a machine with more memory"
    return "try " + ", ".join(options) + ", or a smaller model"


_ELSEWHERE = "run the check on the machine that has the device, or with --device auto"


def _available(fit: FitReport) -> str:
    if fit.available is None:
        return f"; there is no {fit.device} device here to compare with"
    return f" of {gib(fit.available)} available on {fit.device}"


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
        return Check("fit.finetune", "error", summary, _finetune_fix(fit), details)
    largest = (
        f"; largest batch at {cfg.max_seq_len} tokens: {fit.max_batch_size}, longest rows "
        f"at batch {cfg.batch_size}: {fit.max_seq_len} tokens"
    )
    return Check("fit.finetune", "ok", summary + largest, details=details)


def _inference_check(fit: FitReport, details: dict[str, Any]) -> Check:
    cfg = fit.config
    summary = (
        f"{cfg.precision} inference ({cfg.max_seq_len}-token context) needs "
        f"~{gib(fit.inference.total)}{_available(fit)}"
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
    details = fit.to_json()
    return [
        _finetune_check(fit, details["finetune"]),
        _inference_check(fit, details["inference"]),
    ]


def diagnose(fit: FitConfig | None = None, facts: Facts | None = None) -> Report:
    """Every check on this machine (or on `facts`), plus the fit check for `fit`."""
    facts = facts or Facts()
    # a model that cannot be read is bad input: say so before the slower checks
    shape = read_shape(fit.model, fit.trust_remote_code) if fit is not None else None
    checks: list[Check] = []
    with progress.task("Checking this machine", total=len(CHECKS)) as task:
        for check_id, fn in CHECKS.items():
            checks += _run(check_id, fn, facts)
            task.advance()
    report = Report(checks)
    if fit is not None:
        report.fit = check_fit(fit, *fit_device(fit.device, facts), shape=shape)
        report.checks += fit_checks(report.fit)
    return report
