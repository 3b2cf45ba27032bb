"""Run a workflow: plan, check every output before any work, then each stage in order.

Cached stages are skipped and say so. A stage that fails stops the run; the stages before it
stay finished (and recorded), so running the same workflow again starts at the failed stage.
The runner passes `force` to a stage only to replace an output that an earlier run created.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slmforge import progress
from slmforge.errors import Interrupted, OutputExistsError, RunError, SlmforgeError
from slmforge.pipeline.graph import StagePlan, plan_workflow, running_deployment, stage_digest
from slmforge.pipeline.record import (
    RunRecord,
    StageRecord,
    deployment_owner,
    load_records,
    new_run_id,
    owner_of,
    release,
    save_record,
)
from slmforge.pipeline.workflow import Stage, Workflow


class StageFailed(RunError):
    """A stage failed; the exit code is the stage error's (2 for bad input, 1 otherwise)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunResult:
    record: RunRecord
    plan: list[StagePlan]
    record_path: Path


def _deployment(stage: Stage) -> str | None:
    field = stage.kind.deployment_field
    return None if field is None else getattr(stage.config, field)


def _deployment_exists(name: str) -> bool:
    from slmforge.serve import deployments

    return any(d.name == name for d in deployments.all_deployments())


def _foreign(stage: Stage, records: list[RunRecord]) -> str | None:
    """What the stage would replace that no run created (the output or a deployment)."""
    if getattr(stage.config, "force", False):
        return None
    out, name = stage.output, _deployment(stage)
    if out is not None and out.exists() and owner_of(records, out) is None:
        return str(out)
    if name and _deployment_exists(name) and deployment_owner(records, name) is None:
        return f"deployment {name}"
    return None


def check_outputs(workflow: Workflow, steps: list[StagePlan], records: list[RunRecord]) -> None:
    """Fail before any work when a stage would replace something no run created."""
    for step in steps:
        foreign = _foreign(workflow.stages[step.name], records) if step.action == "run" else None
        if foreign:
            raise OutputExistsError(
                f"stage {step.name}: {foreign} exists and no slmforge run created it; "
                f"move it away or set stages.{step.name}.force: true to replace it"
            )


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set secrets handed on by earlier stages for one stage, then restore the environment."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _missing_ancestors(path: Path) -> list[str]:
    missing = []
    for parent in path.resolve().parents:
        if parent.exists():
            break
        missing.append(str(parent))
    return missing


def _siblings(out: Path) -> set[Path]:
    """Entries beside `out` that belong to it (`out`, `out.partial`, `.out.tmp-*`)."""
    parent = out.resolve().parent
    if not parent.is_dir():
        return set()
    return {p for p in parent.iterdir() if p.name.startswith((out.name, f".{out.name}"))}


def _execute(stage: Stage, step: StagePlan, env: dict[str, str]) -> BaseException | None:
    """Run the stage's function; `force` only to replace what an earlier run made."""
    config = stage.config
    out, name = stage.output, _deployment(stage)
    replaces = (out is not None and out.exists()) or (name and _deployment_exists(name))
    if replaces and "force" in type(config).model_fields:
        config = config.model_copy(update={"force": True})
    progress.info(f"stage {stage.name} ({step.kind}): running ({step.reason})")
    try:
        with _environment(env):
            stage.kind.run(config)
    except (Exception, KeyboardInterrupt) as exc:
        return exc
    return None


def _created(stage: Stage, before: set[Path], replaced_own: bool) -> list[str]:
    """New paths beside the output, plus the output when it replaced an earlier run's."""
    out = stage.output
    if out is None:
        return []
    created = {p for p in _siblings(out) if p not in before and p.exists()}
    if replaced_own and out.exists():
        created.add(out.resolve())
    return sorted(str(p) for p in created)


def _failure(stage: Stage, step: StagePlan, error: BaseException) -> SlmforgeError:
    again = f"fix it and run the workflow again to continue from {stage.name}"
    if isinstance(error, KeyboardInterrupt):
        return Interrupted(f"stage {stage.name} interrupted; run the workflow again to continue")
    if isinstance(error, SlmforgeError):
        return StageFailed(
            f"stage {stage.name} ({step.kind}) failed: {error}; {again}", error.exit_code
        )
    return StageFailed(
        f"stage {stage.name} ({step.kind}) failed: {type(error).__name__}: {error}; {again}"
    )


def _run_stage(
    stage: Stage, step: StagePlan, record: RunRecord, runs_dir: Path, env: dict[str, str]
) -> None:
    records = load_records(runs_dir)
    out, name = stage.output, _deployment(stage)
    before = _siblings(out) if out is not None else set()
    owned = out is not None and out.exists() and owner_of(records, out) is not None
    entry = StageRecord(
        kind=step.kind,
        key=step.key,
        status="running",
        reason=step.reason,
        output=str(out.resolve()) if out is not None else None,
        created_dirs=_missing_ancestors(out) if out is not None else [],
        started=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    record.stages[stage.name] = entry
    save_record(runs_dir, record)
    started = time.perf_counter()
    error = _execute(stage, step, env)
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.created = _created(stage, before, owned and error is None)
    entry.deployments = [name] if name and running_deployment(name) is not None else []
    release(runs_dir, records, entry, keep=record.id)
    entry.status = "failed" if error is not None else "done"
    entry.digest = stage_digest(stage) if error is None else None
    if error is not None:
        entry.error = str(error) or type(error).__name__
        record.status = "failed"
        record.finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    save_record(runs_dir, record)
    if error is not None:
        raise _failure(stage, step, error) from error
    progress.info(f"stage {stage.name}: done in {entry.seconds:.1f}s")


def _record_cached(stage: Stage, step: StagePlan, record: RunRecord, runs_dir: Path) -> None:
    record.stages[step.name] = StageRecord(
        kind=step.kind,
        key=step.key,
        status="cached",
        reason=step.reason,
        output=str(stage.output.resolve()) if stage.output is not None else None,
        digest=stage_digest(stage),
        cached_from=step.cached_from,
    )
    save_record(runs_dir, record)
    progress.info(f"stage {step.name} ({step.kind}): cached, {step.reason}")


def run_workflow(workflow: Workflow, force: set[str] | None = None) -> RunResult:
    """Run every stage that is not cached; returns the record of this run."""
    runs_dir = workflow.runs_dir
    records = load_records(runs_dir)
    steps = plan_workflow(workflow, records, force)
    check_outputs(workflow, steps, records)
    run_id = new_run_id()
    record = RunRecord(
        id=run_id,
        workflow=str(workflow.path.resolve()),
        created_dirs=_missing_ancestors(runs_dir / run_id),
    )
    path = save_record(runs_dir, record)
    progress.info(f"run {record.id}: {path}")
    env: dict[str, str] = {}
    for step in steps:
        stage = workflow.stages[step.name]
        if step.action == "run":
            _run_stage(stage, step, record, runs_dir, env)
        else:
            _record_cached(stage, step, record, runs_dir)
        if stage.kind.env is not None:
            env.update(stage.kind.env(stage.config))
    record.status = "done"
    record.finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    save_record(runs_dir, record)
    return RunResult(record, steps, path)
