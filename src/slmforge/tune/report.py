"""What a finished search leaves in OUT: `best.yaml` (a ready `slmforge finetune --config`),
`best/` (the best trial's adapter), `trials.csv`, `report.md` with `history.png` and
`importance.png`, and `slmforge.json` (kind `tune`). Every file is written atomically and can be
rewritten from the study at any time (a resumed or joined search rewrites them at its end)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slmforge import progress
from slmforge.artifacts import MANIFEST, Manifest, atomic_file, sha256_file, source_of
from slmforge.errors import RunError
from slmforge.tune.space import Space
from slmforge.tune.trial import Settings, finetune_config, trial_dir

REPORT_FILES = ("best.yaml", "trials.csv", "report.md", "history.png", "importance.png")


@dataclass
class TuneResult:
    out: Path
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    objective: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def best_yaml(self) -> Path:
        return self.out / "best.yaml"

    @property
    def best_adapter(self) -> Path:
        return self.out / "best"


def trial_rows(study: Any, space: Space, settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        start, end = trial.datetime_start, trial.datetime_complete
        intermediate = trial.intermediate_values
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "eval_loss": trial.user_attrs.get("eval_loss"),
                "last_step": max(intermediate) if intermediate else None,
                "seconds": round((end - start).total_seconds(), 1) if start and end else None,
                "folder": str(trial_dir(settings, trial.number)),
                "note": _note(study, trial),
                **{n: space.value(n, v) for n, v in trial.params.items()},
            }
        )
    return rows


def _note(study: Any, trial: Any) -> str:
    """Why a trial failed or was re-run, and where a retried one came from."""
    attrs, mine = study.user_attrs, trial.user_attrs
    notes = [
        attrs.get(f"trial_{trial.number}_error"),
        attrs.get(f"trial_{trial.number}_stopped"),
        f"retry of trial {mine['retry_of']}" if "retry_of" in mine else None,
        "enqueued first" if mine.get("first") else None,
    ]
    return "; ".join(n for n in notes if n)


def write_outputs(study: Any, space: Space, settings: Settings, counts: dict[str, int]):
    """Write every output of a search from its study; returns the TuneResult."""
    from optuna.trial import TrialState

    out = Path(settings.config["out"])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RunError(
            f"no trial of the study in {out} completed ({counts['pruned']} pruned, "
            f"{counts['fail']} failed); see the warnings above, or add trials with --resume"
        )
    best = study.best_trial
    params = {n: space.value(n, v) for n, v in best.params.items()}
    rows = trial_rows(study, space, settings)
    _write_best_yaml(out / "best.yaml", settings, params)
    _copy_best(trial_dir(settings, best.number), out / "best")
    _write_csv(out / "trials.csv", rows)
    _history_plot(out / "history.png", rows, settings)
    importances = _importance_plot(out / "importance.png", study)
    _write_markdown(out / "report.md", rows, best.number, settings, counts, importances)
    _write_manifest(out, settings, best, params, counts, importances)
    progress.info(f"best trial {best.number}: {settings.config['objective']} {best.value:.4f}")
    return TuneResult(out, best.number, best.value, params, settings.config["objective"], counts)


def _write_best_yaml(path: Path, settings: Settings, params: dict[str, Any]) -> None:
    cfg = finetune_config(settings, params, path.parent / "retrained")
    options = cfg.model_dump(mode="json", exclude_defaults=True)
    options.update({name: getattr(cfg, name) for name in params})
    header = (
        f"# The best configuration found by `slmforge tune` in {path.parent}.\n"
        "# Reproduce it with: slmforge finetune --config best.yaml [--out OTHER]\n"
    )
    with atomic_file(path, force=True) as temp:
        temp.write_text(header + yaml.safe_dump(options, sort_keys=False), encoding="utf-8")


def _copy_best(source: Path, target: Path) -> None:
    """Copy the best trial's folder to `target`, replacing it only once the copy is whole (a
    joined search may do the same at the same moment; either copy is the same best trial)."""
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(source, temp)
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(temp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_file(path, force=True) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()}
            )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _history_plot(path: Path, rows: list[dict[str, Any]], settings: Settings) -> None:
    """Objective per trial (pruned trials at their last eval loss) and the best so far."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["eval_loss"] is not None]
    ax.plot([r["trial"] for r in done], [r["value"] for r in done], "o", label="complete")
    if pruned and settings.config["objective"] == "eval_loss":
        ax.plot([r["trial"] for r in pruned], [r["eval_loss"] for r in pruned], "x", label="pruned")
    best, line = None, []
    better = min if settings.direction == "minimize" else max
    for row in done:
        best = row["value"] if best is None else better(best, row["value"])
        line.append(best)
    ax.step([r["trial"] for r in done], line, where="post", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(settings.config["objective"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, force=True) as temp:
        fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)


def _importance_plot(path: Path, study: Any) -> dict[str, float]:
    """Parameter importances by Optuna's default evaluator (PED-ANOVA in Optuna 5; needs two
    completed trials that differ)."""
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # "importances will be equal" with very few trials
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        importances = {}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(importances), 2) + 1))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (Optuna, PED-ANOVA)")
    if not importances:
        ax.text(0.5, 0.5, "too few completed trials", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_file(path, force=True) as temp:
        fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)
    return {name: round(float(value), 4) for name, value in importances.items()}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def _write_markdown(
    path: Path,
    rows: list[dict[str, Any]],
    best: int,
    settings: Settings,
    counts: dict[str, int],
    importances: dict[str, float],
) -> None:
    config = settings.config
    params = list(dict.fromkeys(k for r in rows for k in r if k not in _FIXED_COLUMNS))
    columns = ["trial", "state", "value", "eval_loss", "last_step", "seconds", *params, "note"]
    lines = [
        f"# Tuning report: {Path(config['out']).name}",
        "",
        f"- model: `{config['model']}`",
        f"- data: `{config['data']}`, eval data: `{config['eval_data']}`",
        f"- objective: {config['objective']} ({settings.direction}), sampler "
        f"{config['sampler']}, pruner {config['pruner']} (eval every {settings.eval_every} steps)",
        f"- trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed",
        f"- best: trial {best} -> `best.yaml`, adapter in `best/`",
        "",
        "## Trials",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        mark = " **(best)**" if row["trial"] == best else ""
        cells = [_cell(row.get(c)) for c in columns]
        cells[0] += mark
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Optimization history", "", "![history](history.png)", ""]
    lines += ["## Parameter importance", "", "![importance](importance.png)", ""]
    lines += [f"- {name}: {value}" for name, value in importances.items()]
    with atomic_file(path, force=True) as temp:
        temp.write_text("\n".join(lines) + "\n", encoding="utf-8")


_FIXED_COLUMNS = {"trial", "state", "value", "eval_loss", "last_step", "seconds", "folder", "note"}


def _write_manifest(
    out: Path,
    settings: Settings,
    best: Any,
    params: dict[str, Any],
    counts: dict[str, int],
    importances: dict[str, float],
) -> None:
    config = settings.config
    manifest = Manifest(kind="tune")
    manifest.source = {
        "base_model": source_of(config["model"], "model"),
        "data": source_of(config["data"], "data"),
        "eval_data": source_of(config["eval_data"], "data"),
    }
    manifest.config = {**config, "base": settings.base, "eval_every": settings.eval_every}
    manifest.metrics = {
        f"best_{config['objective']}": best.value,
        "best_trial": best.number,
        **{f"trials_{k}": counts[k] for k in ("complete", "pruned", "fail")},
    }
    manifest.details = {"best_params": params, "importances": importances}
    manifest.files = {name: sha256_file(out / name) for name in REPORT_FILES}
    with atomic_file(out / MANIFEST, force=True) as temp:
        temp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
