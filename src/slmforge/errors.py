"""The errors the library raises. The CLI maps them to one-line messages and exit codes.

Exit code 2 means the user's input was wrong (fix it and run again); exit code 1 means a run
that was started failed (see the message, retry, or report a bug).
"""

from __future__ import annotations

from dataclasses import dataclass


class SlmforgeError(Exception):
    """Base of every error a user can act on. `str(err)` is the one-line message."""

    exit_code = 1


class InputError(SlmforgeError):
    """Bad input from the user: a file, an option, a config value."""

    exit_code = 2


class ConfigError(InputError):
    """A config value, YAML file or option combination is invalid."""


class OutputExistsError(InputError):
    """The output exists and `--force` was not given."""


class ModelError(InputError):
    """A model folder or hub id that cannot be used as asked."""


class MissingDependencyError(InputError):
    """An optional package is needed for what was asked."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'slmforge[{extra}]'"
        )
        self.package = package
        self.extra = extra


@dataclass(frozen=True)
class Finding:
    """One problem found in a data file, with where it is and what was expected."""

    file: str
    line: int | None
    field: str | None
    message: str
    severity: str = "error"  # "error" or "warning"
    rule: str = ""

    def location(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f" [{self.field}]"
        return where

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
            "rule": self.rule,
        }


class DataError(InputError):
    """A data file has errors; `findings` lists every one of them."""

    def __init__(self, findings: list[Finding], summary: str | None = None) -> None:
        errors = [f for f in findings if f.severity == "error"] or findings
        first = str(errors[0]) if errors else "invalid data"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        super().__init__(summary or f"{first}{more}")
        self.findings = findings


class RunError(SlmforgeError):
    """A started run failed (training diverged, a builder crashed, a verification failed)."""


class RemoteError(RunError):
    """A remote endpoint failed after the allowed retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Interrupted(RunError):
    """The user interrupted a run; what could be saved was saved."""

    exit_code = 130
