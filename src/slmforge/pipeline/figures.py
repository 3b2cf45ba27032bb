"""Key figures of a finished workflow, read from the stages' outputs (manifests, summaries).

A kind registers one function that turns its output into short lines; stages without one, or
whose output is gone, give none. The CLI prints them at the end of `slmforge run`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slmforge.artifacts import read_manifest

if TYPE_CHECKING:
    from slmforge.pipeline.workflow import Stage, Workflow

FIGURES: dict[str, Callable[[Any], list[str]]] = {}


def figures_for(kind: str) -> Callable[[Callable[[Any], list[str]]], Callable[[Any], list[str]]]:
    def register(fn: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
        FIGURES[kind] = fn
        return fn

    return register


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


@figures_for("finetune")
def _finetune(cfg: Any) -> list[str]:
    manifest = read_manifest(cfg.out)
    if manifest is None:
        return []
    m = manifest.metrics
    first, last = m.get("train_loss_first"), m.get("train_loss_last")
    if first is None or last is None:
        return []
    drop = f" ({(first - last) / first:.0%} lower)" if first else ""
    return [f"train loss {first:.3f} -> {last:.3f}{drop} in {m.get('steps', '?')} steps"]


@figures_for("optimize")
def _optimize(cfg: Any) -> list[str]:
    manifest = read_manifest(cfg.out)
    if manifest is None or not manifest.metrics.get("size_after_bytes"):
        return []
    m = manifest.metrics
    return [
        f"{cfg.precision} {cfg.format.upper()} {m['size_after_bytes'] / 1e6:.1f} MB, "
        f"size ratio {_number(m.get('size_ratio'), '.3f')} vs safetensors"
    ]


@figures_for("eval")
def _eval(cfg: Any) -> list[str]:
    path = cfg.out / "summary.json"
    if not path.is_file():
        return []
    summary = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for name, result in summary.get("results", {}).items():
        f1 = result.get("metrics", {}).get("f1", {}).get("mean")
        speed = result.get("performance", {}).get("tokens_per_s", {}).get("p50")
        lines.append(f"{name}: f1 {_number(f1, '.3f')}, {_number(speed, '.0f')} tokens/s (p50)")
    return [*lines, f"report: {cfg.out / 'report.html'}"]


def stage_figures(stage: Stage) -> list[str]:
    fn = FIGURES.get(stage.kind.name)
    return fn(stage.config) if fn is not None else []


def workflow_figures(workflow: Workflow) -> dict[str, list[str]]:
    """Stage name -> its figure lines, for the stages that have any."""
    found = {name: stage_figures(stage) for name, stage in workflow.stages.items()}
    return {name: lines for name, lines in found.items() if lines}
