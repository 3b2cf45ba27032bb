"""The one way the library reports progress and log lines.

Three renderings of the same events, chosen by the CLI with `--log-format`:
  rich  - progress bars with ETA on a terminal (the default on a TTY),
  plain - one line per event, throttled bars (the default when stderr is not a TTY),
  json  - one JSON object per line, for machines.
Everything goes to stderr so stdout stays free for a command's own result.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "rich", "plain", "json"]

_PLAIN_EVERY_S = 5.0
_JSON_EVERY_S = 1.0


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class Task:
    """A running task; `advance` moves it on, `update` sets its metrics."""

    def __init__(self, reporter: Reporter, description: str, total: float | None) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self.completed = 0.0
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self._last_emit = 0.0
        self._rich_id: Any = None

    def advance(self, amount: float = 1, **metrics: Any) -> None:
        self.completed += amount
        self.metrics.update(metrics)
        self.reporter._on_task_update(self)

    def update(self, completed: float | None = None, **metrics: Any) -> None:
        if completed is not None:
            self.completed = completed
        self.metrics.update(metrics)
        self.reporter._on_task_update(self)

    def eta_s(self) -> float | None:
        if not self.total or self.completed <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.completed * (self.total - self.completed)


class Reporter:
    """Renders log lines and tasks in one of the three formats."""

    def __init__(self, fmt: LogFormat = "auto", stream: TextIO | None = None, quiet: bool = False):
        self._stream = stream
        if fmt == "auto":
            fmt = "rich" if self.stream.isatty() else "plain"
        self.format: LogFormat = fmt
        self.quiet = quiet
        self._progress: Any = None
        self._console: Any = None
        if fmt == "rich":
            from rich.console import Console

            self._console = Console(file=stream) if stream else Console(stderr=True)

    @property
    def stream(self) -> TextIO:
        """The given stream, or whatever sys.stderr is now (it may be replaced after start-up)."""
        return self._stream or sys.stderr

    # -- log lines ---------------------------------------------------------------------------
    def info(self, message: str, **fields: Any) -> None:
        if not self.quiet:
            self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if self.format == "json":
            self._write_json({"event": "log", "level": level, "message": message, **fields})
        elif self.format == "rich":
            style = "yellow" if level == "warning" else "dim"
            prefix = "warning: " if level == "warning" else ""
            self._console.print(
                f"[{style}]{prefix}[/{style}]{message}", highlight=False, markup=False
            )
        else:
            prefix = "warning: " if level == "warning" else ""
            print(f"{prefix}{message}", file=self.stream, flush=True)

    def _write_json(self, obj: dict[str, Any]) -> None:
        obj = {"time": round(time.time(), 3), **obj}
        print(json.dumps(obj, default=str), file=self.stream, flush=True)

    # -- tasks -------------------------------------------------------------------------------
    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]:
        task = Task(self, description, total)
        self._start_task(task)
        try:
            yield task
        finally:
            self._finish_task(task)

    def _start_task(self, task: Task) -> None:
        if self.quiet:
            return
        if self.format == "rich":
            if self._progress is None:
                self._progress = _make_rich_progress(self._console)
                self._progress.start()
            task._rich_id = self._progress.add_task(task.description, total=task.total, metrics="")
        elif self.format == "json":
            self._write_json({"event": "task_start", "task": task.description, "total": task.total})
        else:
            total = f" ({task.total:g} steps)" if task.total else ""
            print(f"{task.description}{total} ...", file=self.stream, flush=True)

    def _on_task_update(self, task: Task) -> None:
        if self.quiet:
            return
        if self.format == "rich":
            self._progress.update(
                task._rich_id, completed=task.completed, metrics=_format_metrics(task.metrics)
            )
            return
        now = time.monotonic()
        every = _JSON_EVERY_S if self.format == "json" else _PLAIN_EVERY_S
        if now - task._last_emit < every and task.completed != task.total:
            return
        task._last_emit = now
        if self.format == "json":
            self._write_json(_task_event("task_progress", task))
        else:
            print(_plain_task_line(task), file=self.stream, flush=True)

    def _finish_task(self, task: Task) -> None:
        if self.quiet:
            return
        if self.format == "rich":
            self._progress.update(task._rich_id, metrics=_format_metrics(task.metrics))
            self._progress.stop_task(task._rich_id)
            if all(t.finished or not t.started for t in self._progress.tasks):
                self._progress.stop()
                self._progress = None
        elif self.format == "json":
            self._write_json(_task_event("task_end", task))
        else:
            elapsed = time.monotonic() - task.started
            metrics = _format_metrics(task.metrics)
            print(
                f"{task.description}: done in {elapsed:.1f}s {metrics}".rstrip(), file=self.stream
            )


def _task_event(event: str, task: Task) -> dict[str, Any]:
    return {
        "event": event,
        "task": task.description,
        "completed": task.completed,
        "total": task.total,
        "elapsed_s": round(time.monotonic() - task.started, 3),
        "eta_s": None if task.eta_s() is None else round(task.eta_s() or 0.0, 1),
        "metrics": task.metrics,
    }


def _plain_task_line(task: Task) -> str:
    done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
    eta = task.eta_s()
    eta_text = f" eta {eta:.0f}s" if eta is not None else ""
    metrics = _format_metrics(task.metrics)
    return f"{task.description}: {done}{eta_text} {metrics}".rstrip()


def _make_rich_progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
    )


_reporter = Reporter("plain")


def configure(
    fmt: LogFormat = "auto", quiet: bool = False, stream: TextIO | None = None
) -> Reporter:
    """Set the process-wide reporter (the CLI calls this once, from its global options)."""
    global _reporter
    _reporter = Reporter(fmt, stream=stream, quiet=quiet)
    return _reporter


def reporter() -> Reporter:
    return _reporter


def info(message: str, **fields: Any) -> None:
    _reporter.info(message, **fields)


def warn(message: str, **fields: Any) -> None:
    _reporter.warn(message, **fields)


def task(description: str, total: float | None = None) -> Any:
    """`with progress.task("Training", total=100) as t: t.advance(loss=1.2)`."""
    return _reporter.task(description, total)
