"""`slmforge clean`: stop the deployments and delete the paths that runs created, nothing else.

The plan comes only from run records: paths a run created (its outputs, their leftovers such as
`OUT.partial/`, and the folders it had to make, removed only when empty), the deployments it
started, and the record itself. A path that is the filesystem root, the home folder or the
working folder (or holds it) is never deleted, whatever a record says.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from slmforge import progress
from slmforge.errors import InputError
from slmforge.pipeline.record import RunRecord, load_record, load_records


@dataclass
class CleanPlan:
    runs_dir: Path
    runs: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # deleted
    dirs: list[Path] = field(default_factory=list)  # removed when empty, deepest first
    records: list[Path] = field(default_factory=list)


def _protected(path: Path) -> bool:
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    return path == Path(path.anchor) or path in (home, cwd) or path in cwd.parents


def plan_clean(runs_dir: Path, run_id: str | None = None, everything: bool = False) -> CleanPlan:
    if (run_id is None) == (not everything):
        raise InputError("give a RUN_ID or --all (not both)")
    records: list[RunRecord] = (
        list(reversed(load_records(runs_dir))) if everything else [load_record(runs_dir, run_id)]
    )
    plan = CleanPlan(runs_dir)
    dirs: set[Path] = set()
    for record in records:
        plan.runs.append(record.id)
        plan.records.append(runs_dir / record.id)
        dirs.update(Path(d) for d in record.created_dirs if not _protected(Path(d)))
        for stage in record.stages.values():
            plan.deployments.extend(stage.deployments)
            for text in stage.created:
                path = Path(text)
                if (path.exists() or path.is_symlink()) and not _protected(path):
                    plan.paths.append(path)
            dirs.update(Path(d) for d in stage.created_dirs if not _protected(Path(d)))
    plan.dirs = sorted(dirs, key=lambda p: len(p.parts), reverse=True)
    return plan


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _stop_deployment(name: str) -> None:
    from slmforge.serve import deployments

    if any(d.name == name for d in deployments.all_deployments()):
        deployments.delete(name)
        progress.info(f"stopped and deleted deployment {name}")


def apply_clean(plan: CleanPlan) -> None:
    for name in plan.deployments:
        _stop_deployment(name)
    for path in plan.paths:
        _delete(path)
        progress.info(f"deleted {path}")
    for folder in plan.records:
        _delete(folder)
    for folder in plan.dirs:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
