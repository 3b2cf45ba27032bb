"""`slmforge doctor`: run every registered check, then the fit check when a model is given
(its findings are built in fit_checks.py)."""

from __future__ import annotations

from slmforge import progress
from slmforge.config.doctor import FitConfig
from slmforge.doctor.facts import Facts
from slmforge.doctor.fit import check_fit, read_shape
from slmforge.doctor.fit_checks import fit_checks
from slmforge.doctor.report import CHECKS, Check, CheckFn, Report

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
        device, available = fit_device(fit.device, facts)
        host = facts.memory.available  # merge and optimize run in this machine's memory
        report.fit = check_fit(fit, device, available, shape=shape, host_available=host)
        report.checks += fit_checks(report.fit)
    return report
