"""One trial: the sampled options -> a normal `finetune` run in `OUT/trials/trial-NNNN` -> the
objective. Both backends run trials through `run_trial`, so pruning, artifacts and objective
values mean the same thing whichever executes them.

Settings every trial needs (the tune options with absolute paths, the fixed finetune options,
the evaluation cadence and direction) live in the study itself (`Settings.to_attrs`), so a
second process or a Ray worker needs only the storage URL to join.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import read_manifest
from slmforge.config import load_yaml, validate
from slmforge.config.finetune import FinetuneConfig
from slmforge.config.tune import TuneConfig
from slmforge.errors import ConfigError, RunError

SETTINGS_ATTR = "slmforge_settings"
# objectives read from the trial's own evaluations (metrics.jsonl), with their direction; the
# reward figures exist only for preference objectives (dpo, orpo, simpo)
TRAINING_OBJECTIVES = {
    "eval_loss": "minimize",
    "eval_reward_accuracy": "maximize",
    "eval_reward_margin": "maximize",
}
PAIR_ONLY = frozenset({"eval_reward_accuracy", "eval_reward_margin"})
STUDY_NAME = "slmforge-tune"
# finetune options that a base config may not set: the study decides them
_STUDY_OWNED = ("model", "data", "eval_data", "out", "force", "resume")


class BudgetReached(Exception):
    """The time budget ended while a trial ran; the trial is retried on --resume."""


@dataclass
class Settings:
    config: dict[str, Any]  # TuneConfig, paths absolute
    base: dict[str, Any]  # fixed finetune options of every trial
    eval_every: int
    total_steps: int  # estimated steps of a trial, Hyperband's max resource
    direction: str  # "minimize" | "maximize"

    @property
    def tune(self) -> TuneConfig:
        return TuneConfig.model_validate(self.config)

    @property
    def finetune_objective(self) -> str:
        """The training objective of every trial (the base config's, default sft)."""
        return self.base.get("objective") or FinetuneConfig.model_fields["objective"].default

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Settings:
        return cls(**attrs)

    def identity(self) -> dict[str, Any]:
        """What decides the study's meaning; a resumed study must match it."""
        keep = ("model", "data", "eval_data", "objective", "objective_rows", "sampler", "pruner")
        return {
            "config": {k: self.config[k] for k in keep},
            "base": self.base,
            "eval_every": self.eval_every,
        }


def make_settings(cfg: TuneConfig, space_params: dict[str, Any]) -> Settings:
    """Resolve paths, read the base config, and fix the evaluation cadence of every trial."""
    config = cfg.model_dump(mode="json")
    for name in ("data", "eval_data", "space", "base_config"):
        if config[name] is not None:
            config[name] = str(Path(config[name]).resolve())
    if Path(cfg.model).exists():
        config["model"] = str(Path(cfg.model).resolve())
    config["out"] = str(Path(cfg.out).resolve())
    base = _base_options(cfg.base_config)
    trial = trial_config_from(config, base, {}, Path(config["out"]) / "check")
    total = _estimate_steps(trial, space_params)
    eval_every = trial.eval_every or max(1, total // cfg.evals_per_trial)
    direction = _direction(cfg.objective, trial.objective)
    return Settings(config, base, eval_every, total, direction)


def _base_options(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    base = load_yaml(path)
    for name in _STUDY_OWNED:
        if name in base:
            raise ConfigError(f"{path}: {name}: set by `slmforge tune`, remove it from the base")
    if base.get("nproc", 1) != 1:
        raise ConfigError(f"{path}: nproc: trials run in one process each; use --parallel")
    validate(FinetuneConfig, {"model": "m", "data": "d", "out": "o", **base}, prefix=f"{path}: ")
    return base


def _direction(objective: str, finetune_objective: str) -> str:
    """Whether the study minimizes or maximizes `objective` (what `tune --objective` names),
    checked against the trials' training objective."""
    from slmforge.config.methods import get_objective
    from slmforge.evaluate.metrics import METRICS

    pairs = get_objective(finetune_objective).pairs
    if objective in TRAINING_OBJECTIVES:
        if objective in PAIR_ONLY and not pairs:
            raise ConfigError(
                f"--objective {objective}: only preference objectives log it; set "
                "`objective: dpo` (or orpo, simpo) in --base-config, or use eval_loss"
            )
        return TRAINING_OBJECTIVES[objective]
    metric = METRICS.get(objective)
    if metric is None:
        known = ", ".join([*TRAINING_OBJECTIVES, *METRICS])
        raise ConfigError(f"--objective {objective!r}: unknown (known: {known})")
    if metric.higher_is_better is None or not metric.needs_reference:
        raise ConfigError(f"--objective {objective}: not a quality metric with a reference")
    if pairs:
        raise ConfigError(
            f"--objective {objective}: scores answers against reference examples; a "
            f"{finetune_objective} study uses {', '.join(TRAINING_OBJECTIVES)}"
        )
    return "maximize" if metric.higher_is_better else "minimize"


def _estimate_steps(trial: FinetuneConfig, space_params: dict[str, Any]) -> int:
    """Steps of a trial, for the eval cadence (the largest max_steps the space allows)."""
    steps = _largest(space_params.get("max_steps")) or trial.max_steps
    if steps:
        return int(steps)
    from slmforge.config.methods import get_objective

    if get_objective(trial.objective).pairs:
        from slmforge.data.preference import read_preference_examples

        rows = len(read_preference_examples(trial.data, trial))
    else:
        from slmforge.data.formats import read_examples

        rows = len(read_examples(trial.data, trial))
    per_step = trial.batch_size * trial.grad_accum
    epochs = _largest(space_params.get("epochs")) or trial.epochs
    return max(1, math.ceil(epochs * max(rows // per_step, 1)))


def _largest(param: Any) -> float | None:
    if param is None:
        return None
    return max(param.choices) if hasattr(param, "choices") else param.high


def trial_config_from(
    config: dict[str, Any], base: dict[str, Any], values: dict[str, Any], out: Path
) -> FinetuneConfig:
    options = {
        **base,
        **values,
        "model": config["model"],
        "data": config["data"],
        "eval_data": config["eval_data"],
        "out": str(out),
    }
    options.setdefault("eval_every", None)
    return validate(FinetuneConfig, options, prefix="trial options: ")


def trial_dir(settings: Settings, number: int) -> Path:
    return Path(settings.config["out"]) / "trials" / f"trial-{number:04d}"


def finetune_config(settings: Settings, values: dict[str, Any], out: Path) -> FinetuneConfig:
    cfg = trial_config_from(settings.config, settings.base, values, out)
    return cfg.model_copy(update={"eval_every": cfg.eval_every or settings.eval_every})


Reporter = Callable[[dict[str, Any]], None]


def run_trial(
    settings: Settings,
    trial: Any,
    values: dict[str, Any],
    deadline: float | None,
    report: Reporter | None = None,
) -> float:
    """Train one trial and return its objective; raise optuna.TrialPruned when the pruner
    stopped it (its artifact is still written), BudgetReached when time ran out."""
    import optuna

    out = trial_dir(settings, trial.number)
    cfg = finetune_config(settings, values, out)
    objective = settings.config["objective"]
    # the pruner reads intermediate values in the study's direction: the objective itself when
    # training logs it, else the eval loss (negated when the study maximizes a metric)
    watched = objective if objective in TRAINING_OBJECTIVES else "eval_loss"
    sign = -1.0 if watched == "eval_loss" and settings.direction == "maximize" else 1.0

    def on_eval(step: int, metrics: dict[str, float]) -> str | None:
        if deadline is not None and time.time() > deadline:
            raise BudgetReached(f"time budget reached at step {step}")
        trial.report(sign * metrics[watched], step)
        if report is not None:
            report({"step": step, **{k: metrics[k] for k in dict.fromkeys(("eval_loss", watched))}})
        if trial.should_prune():
            return f"pruned: {watched.replace('_', ' ')} worse than the pruner allows"
        return None

    from slmforge.train.sft import finetune, work_dir

    for leftover in (out, work_dir(out)):  # of a crashed attempt with this number
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        finetune(cfg, on_eval=on_eval)
    finally:
        gc.collect()
    manifest = read_manifest(out)
    if manifest is None:
        raise RunError(f"{out}: the trial wrote no artifact")
    trial.set_user_attr("eval_loss", manifest.metrics.get("eval_loss_final"))
    if "stopped_early" in manifest.details:
        trial.set_user_attr("pruned_at_step", manifest.details["stopped_early"]["step"])
        raise optuna.TrialPruned(f"pruned at step {manifest.details['stopped_early']['step']}")
    if objective == "eval_loss":
        return float(manifest.metrics["eval_loss_final"])
    if objective in TRAINING_OBJECTIVES:
        return final_eval_value(out, objective)
    return metric_objective(settings, out)


def final_eval_value(artifact: Path, name: str) -> float:
    """The last evaluation's `name` (e.g. eval_reward_accuracy) in an artifact's metrics.jsonl."""
    from slmforge.train.metrics import MetricsLog

    values = [r[name] for r in MetricsLog(artifact / "metrics.jsonl").records() if name in r]
    if not values:
        raise RunError(f"{artifact}/metrics.jsonl: no evaluation logged {name}")
    return float(values[-1])


def metric_objective(settings: Settings, adapter: Path) -> float:
    """Mean of a `slmforge eval` metric over the first `objective_rows` eval rows, answered
    greedily by the trained adapter."""
    from slmforge.config.data import ReadOptions
    from slmforge.data.formats import read_examples
    from slmforge.evaluate.metrics import METRICS
    from slmforge.runtime.engine import GenParams, complete
    from slmforge.runtime.specs import load_engine

    config = settings.config
    read = ReadOptions(**{k: v for k, v in settings.base.items() if k in ReadOptions.model_fields})
    rows = read_examples(config["eval_data"], read)[: config["objective_rows"]]
    engine = load_engine(str(adapter))
    params = GenParams(max_tokens=128)
    with progress.task(f"Scoring {config['objective']}", total=len(rows)) as bar:
        answers = []
        for row in rows:
            answers.append(complete(engine, row.messages[:-1], params).text)
            bar.advance()
    scores = METRICS[config["objective"]].score(answers, [row.response for row in rows])
    values = [s for s in scores if s is not None]
    if not values:
        raise RunError(f"--objective {config['objective']}: no eval row could be scored")
    return sum(values) / len(values)
