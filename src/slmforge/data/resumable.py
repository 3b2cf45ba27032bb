"""Resumable outputs: a JSONL file appended row by row plus a sidecar state file (synth,
augment), so a run stopped by a crash or Ctrl-C continues with `--resume` where it stopped.

Rows are appended and fsynced as they are made; the state (the run's options and how far it
got) is replaced atomically after each step. A crash can still cut the last row off mid-write:
`repair_last_line` keeps a last row that is whole and only misses its newline, and drops one
cut off mid-write, so both commands resume from the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from slmforge import progress
from slmforge.artifacts import atomic_file
from slmforge.errors import ConfigError, InputError, OutputExistsError

STATE_VERSION = 1
T = TypeVar("T")


def state_path_for(out: str | Path, suffix: str) -> Path:
    out = Path(out)
    return out.with_name(out.name + suffix)


def check_resumable_output(resume: bool, force: bool, out: Path, state_path: Path) -> None:
    """Fail before any request when the output (file + state file) may not be written as
    asked."""
    if resume and force:
        raise ConfigError("--resume continues a run and --force starts over; pass only one")
    if resume or force:
        return
    for path in (out, state_path):
        if path.exists():
            raise OutputExistsError(
                f"{path} already exists; pass --resume to continue that run or --force to "
                "start over"
            )


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def repair_last_line(out: Path) -> None:
    """Make `out` end with a whole row: a last line without its newline is kept (newline
    added) when it is a whole JSON object, and removed when it was cut off mid-write."""
    data = out.read_bytes() if out.exists() else b""
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    if _is_json_object(data[keep:]):
        with open(out, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return
    with open(out, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    progress.warn(f"{out}: removed a last line cut off mid-write ({len(data) - keep} bytes)")


def load_state(
    path: Path, options: dict[str, Any], command: str, fields: Callable[[dict[str, Any]], T]
) -> T | None:
    """The saved state of a run started with the same `options` (None when there is none);
    `fields` reads the command's own fields from the state's JSON."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        saved = data["options"]
        state = fields(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: unreadable {command} state ({exc.__class__.__name__}); pass --force to "
            "start over"
        ) from None
    changed = sorted(k for k in options.keys() | saved.keys() if saved.get(k) != options.get(k))
    if changed:
        raise ConfigError(
            f"{path}: the run was started with different {', '.join(changed)}; "
            "resume with the same options or pass --force to start over"
        )
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (a crash leaves the old one or the new one)."""
    data = {"version": STATE_VERSION, **state}
    with atomic_file(path, force=True) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
