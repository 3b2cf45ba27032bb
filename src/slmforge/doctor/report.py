"""Findings of `slmforge doctor`: one `Check` per thing looked at, and the report's JSON form.

Checks register by id with `@check("cpu")`; the report lists them in registration order. The
JSON form is a documented interface (docs/setup.md): bump `SCHEMA_VERSION` when a key changes
meaning or goes away; adding keys or checks keeps the version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import slmforge

if TYPE_CHECKING:
    from slmforge.doctor.facts import Facts
    from slmforge.doctor.fit import FitReport

SCHEMA_VERSION = 1
Status = Literal["ok", "warning", "error"]
_RANK = {"ok": 0, "warning": 1, "error": 2}


@dataclass
class Check:
    """One finding: a stable `id`, a status, a one-line summary and, unless ok, a one-line fix."""

    id: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


CheckFn = Callable[["Facts"], "Check | list[Check]"]
CHECKS: dict[str, CheckFn] = {}


def check(check_id: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check function under `check_id` (it may return several checks, e.g. extras)."""

    def decorator(fn: CheckFn) -> CheckFn:
        CHECKS[check_id] = fn
        return fn

    return decorator


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default="ok")


@dataclass
class Report:
    checks: list[Check]
    fit: FitReport | None = None

    @property
    def status(self) -> Status:
        return worst([c.status for c in self.checks])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "slmforge_version": slmforge.__version__,
            "status": self.status,
            "checks": [asdict(c) for c in self.checks],
            "fit": self.fit.to_json() if self.fit is not None else None,
        }
