"""The stage graph: run order, cache keys and the plan (what runs, what is cached, and why).

A stage's cache key hashes its kind, its validated config (without `force`), the keys of the
stages it references (so a change anywhere upstream changes every key below it, and the plan is
exact before anything runs), the content of every other input path it names (files by sha256,
artifact folders by their manifest's file hashes), and the slmforge version. A stage is cached
when an earlier run finished it with the same key and its output is still what that run wrote.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge import __version__
from slmforge.artifacts import folder_digest, read_manifest, sha256_file
from slmforge.errors import ConfigError

if TYPE_CHECKING:
    from slmforge.pipeline.record import RunRecord
    from slmforge.pipeline.workflow import Stage, Workflow

# Options that say how to write the output, not what it is.
NOT_IN_KEY = frozenset({"force"})


def topological_order(needs: dict[str, list[str]], where: str) -> list[str]:
    """Stages in file order, each after the stages it needs; a cycle is a ConfigError."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*chain[chain.index(name) :], name]
            raise ConfigError(f"{where}: cycle between stages: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dependency in needs[name]:
            visit(dependency, [*chain, name])
        state[name] = "done"
        order.append(name)

    for name in needs:
        visit(name, [])
    return order


def content_hash(path: Path) -> str | None:
    """sha256 of a file, the digest of a folder, or None when nothing is there.

    An artifact folder is hashed through its manifest's file hashes (cheap); a folder without
    one (a model downloaded by hand) by each file's path, size and modification time, so a
    multi-GB model is not read on every run.
    """
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    if read_manifest(path) is not None:
        return folder_digest(path)
    stats = [
        (p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _existing(text: str) -> Path | None:
    """`text` as an existing path, or None (also for strings that cannot be paths)."""
    if not text or "\n" in text or len(text) > 4096:
        return None
    try:
        path = Path(text).resolve()
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def running_deployment(name: str) -> str | None:
    """The start time of deployment `name`'s live process, or None when it is not running."""
    from slmforge.serve import deployments

    for deployment in deployments.all_deployments():
        if deployment.name == name and deployments.alive(deployment):
            return deployment.started
    return None


def stage_digest(stage: Stage) -> str | None:
    """What a finished stage left: its output's content, and its deployment's live process."""
    digest = content_hash(stage.output) if stage.output is not None else None
    field = stage.kind.deployment_field
    if field is None or digest is None:
        return digest
    started = running_deployment(getattr(stage.config, field))
    return None if started is None else f"{digest}:{started}"


def _path_candidates(value: Any) -> list[str]:
    """Strings in a config value that may name paths (`NAME=DIR` and `BASE+ADAPTER` split)."""
    if isinstance(value, str):
        parts = {value, value.partition("=")[2], *value.rpartition("=")[2].split("+")}
        return [p for p in parts if p]
    if isinstance(value, list):
        return [p for item in value for p in _path_candidates(item)]
    if isinstance(value, dict):
        return [p for item in value.values() for p in _path_candidates(item)]
    return []


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def input_hashes(stage: Stage, upstream_outputs: list[Path]) -> dict[str, str]:
    """Content hashes of the existing paths a stage reads that no upstream stage writes."""
    config = stage.config.model_dump(mode="json")
    hashes: dict[str, str] = {}
    for field, value in config.items():
        if field == stage.kind.output_field or field in NOT_IN_KEY:
            continue
        for text in _path_candidates(value):
            path = _existing(text)
            if path is None or any(_within(path, out) for out in upstream_outputs):
                continue
            digest = content_hash(path)
            if digest is not None:
                hashes[text] = digest
    return dict(sorted(hashes.items()))


def cache_key(stage: Stage, upstream_keys: dict[str, str], inputs: dict[str, str]) -> str:
    payload = {
        "slmforge_version": __version__,
        "kind": stage.kind.name,
        "config": stage.config.model_dump(mode="json", exclude=set(NOT_IN_KEY)),
        "needs": {name: upstream_keys[name] for name in stage.needs},
        "inputs": inputs,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StagePlan:
    name: str
    kind: str
    key: str
    action: str  # "run" or "cached"
    reason: str
    output: Path | None
    cached_from: str | None = None  # the run whose result is reused


def _cached_reason(stage: Stage, key: str, records: list[RunRecord]) -> tuple[str | None, str]:
    """(run id to reuse, "") when cached, else (None, why it must run)."""
    attempts = [(r, r.stages[stage.name]) for r in reversed(records) if stage.name in r.stages]
    done = [(r, s) for r, s in attempts if s.status in ("done", "cached")]
    if not attempts:
        return None, "no earlier run"
    for record, entry in done:
        if entry.key != key:
            continue
        current = stage_digest(stage)
        if current is None and entry.digest is not None:
            what = "is not running" if stage.kind.deployment_field else "is missing"
            return None, f"its output {stage.output} {what}"
        if current != entry.digest:
            return None, f"its output {stage.output} changed since run {record.id}"
        return entry.cached_from or record.id, ""
    last_record, last = attempts[0]
    if last.status == "failed" and last.key == key:
        return None, f"it failed in run {last_record.id}"
    return None, f"its config or inputs changed since run {last_record.id}"


def plan_workflow(
    workflow: Workflow, records: list[RunRecord], force: set[str] | None = None
) -> list[StagePlan]:
    """What each stage will do, in run order; `force` names stages to rerun with dependents."""
    force = set(force or ())
    unknown = sorted(force - set(workflow.stages))
    if unknown:
        raise ConfigError(
            f"--force {unknown[0]}: no such stage in {workflow.path} "
            f"(stages: {', '.join(workflow.stages)})"
        )
    forced = workflow.dependents(force)
    keys: dict[str, str] = {}
    plans: dict[str, StagePlan] = {}
    for name, stage in workflow.stages.items():
        upstream = [workflow.stages[n].output for n in stage.needs]
        outputs = [p.resolve() for p in upstream if p is not None]
        keys[name] = cache_key(stage, keys, input_hashes(stage, outputs))
        running = [n for n in stage.needs if plans[n].action == "run"]
        if name in force:
            cached_from, reason = None, "--force"
        elif name in forced:
            cached_from, reason = None, f"it depends on forced stage {', '.join(sorted(force))}"
        elif running:
            verb = "runs" if len(running) == 1 else "run"
            cached_from, reason = None, f"it needs {', '.join(running)}, which {verb}"
        else:
            cached_from, reason = _cached_reason(stage, keys[name], records)
        action = "cached" if cached_from else "run"
        reason = reason or f"unchanged since run {cached_from}"
        plans[name] = StagePlan(
            name, stage.kind.name, keys[name], action, reason, stage.output, cached_from
        )
    return list(plans.values())
