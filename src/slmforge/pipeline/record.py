"""Run records: `runs/<id>/run.json`, what each stage did and exactly what it created.

A record is rewritten (atomically) after every stage, so a crash leaves a record that says what
finished. `created` lists only paths that did not exist before the stage ran (or that an
earlier run had created, whose ownership then moves to this run): `slmforge clean` deletes
exactly those, and never a path the user made.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slmforge import __version__
from slmforge.errors import InputError

RECORD = "run.json"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    key: str
    status: Literal["running", "done", "cached", "failed"]
    reason: str = ""
    output: str | None = None
    digest: str | None = None  # content hash of the output when the stage finished
    cached_from: str | None = None
    created: list[str] = Field(default_factory=list)  # absolute paths this run owns
    created_dirs: list[str] = Field(default_factory=list)  # removed by clean only when empty
    deployments: list[str] = Field(default_factory=list)
    started: str | None = None
    seconds: float | None = None
    error: str | None = None


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    workflow: str
    slmforge_version: str = __version__
    started: str = Field(default_factory=_now)
    finished: str | None = None
    status: Literal["running", "done", "failed"] = "running"
    created_dirs: list[str] = Field(default_factory=list)  # made for the record itself
    stages: dict[str, StageRecord] = Field(default_factory=dict)

    def created_paths(self) -> list[str]:
        return [p for stage in self.stages.values() for p in stage.created]


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent runs."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def record_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / run_id / RECORD


def save_record(runs_dir: Path, record: RunRecord) -> Path:
    path = record_path(runs_dir, record.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{RECORD}.tmp-{os.getpid()}")
    temp.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path


def load_records(runs_dir: Path) -> list[RunRecord]:
    """Every run record under `runs_dir`, oldest first."""
    if not runs_dir.is_dir():
        return []
    records = []
    for path in sorted(runs_dir.glob(f"*/{RECORD}")):
        try:
            records.append(RunRecord.model_validate_json(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise InputError(f"{path}: not a valid run record ({exc.__class__.__name__})") from exc
    return sorted(records, key=lambda r: (r.started, r.id))


def load_record(runs_dir: Path, run_id: str) -> RunRecord:
    for record in load_records(runs_dir):
        if record.id == run_id:
            return record
    known = ", ".join(r.id for r in load_records(runs_dir)) or "none"
    raise InputError(f"no run {run_id!r} in {runs_dir} (runs: {known})")


def owner_of(records: list[RunRecord], path: Path) -> RunRecord | None:
    """The run that created `path`, if any."""
    target = str(path.resolve())
    for record in records:
        if target in record.created_paths():
            return record
    return None


def deployment_owner(records: list[RunRecord], name: str) -> RunRecord | None:
    """The run that started deployment `name`, if any."""
    for record in records:
        if any(name in stage.deployments for stage in record.stages.values()):
            return record
    return None


def release(runs_dir: Path, records: list[RunRecord], taken: StageRecord, keep: str) -> None:
    """Move ownership of what `taken` created to run `keep`: drop it from every other record."""
    for record in records:
        if record.id == keep:
            continue
        changed = False
        for stage in record.stages.values():
            paths = [p for p in stage.created if p not in taken.created]
            names = [d for d in stage.deployments if d not in taken.deployments]
            changed |= paths != stage.created or names != stage.deployments
            stage.created, stage.deployments = paths, names
        if changed:
            save_record(runs_dir, record)
