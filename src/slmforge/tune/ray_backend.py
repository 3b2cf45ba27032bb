"""`slmforge tune --backend ray`: the same trials, scheduled by Ray Tune on a local or existing
Ray cluster (the scale-out path).

Ray Tune runs one Tune trial per remaining study trial, at most `--parallel` at a time, each in
a Ray worker with its share of the CPUs (or one GPU each, where the cluster has GPUs). Each Tune
trial joins the Optuna study and runs exactly one study trial through the same `run_trials` as
the local backend, so sampling, pruning (Optuna's pruner on the intermediate eval loss),
artifacts and resume behave the same; Ray additionally records every intermediate eval loss in
its own results (`OUT/ray/`). On a multi-node cluster OUT must be on storage every node sees,
and the study in a database every node reaches (`--storage postgresql://...`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.errors import MissingDependencyError, RunError
from slmforge.tune import study as studies
from slmforge.tune.space import Space
from slmforge.tune.trial import Settings


def run_with_ray(url: str, settings: Settings, space: Space, deadline: float | None) -> None:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise MissingDependencyError("ray[tune]", "scale", "--backend ray") from None
    cfg = settings.tune
    study, _ = studies.load_study(url)
    studies.reap_dead_trials(study, settings)
    remaining = studies.budget(settings, space) - studies.counts(study)["finished"]
    if remaining <= 0:
        return
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, **options)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **options)
    try:
        resources = _trial_resources(cfg.parallel)
        progress.info(f"Ray Tune: {remaining} trials, {cfg.parallel} at a time, {resources} each")
        budget_s = max(deadline - time.time(), 1.0) if deadline is not None else None
        tuner = tune.Tuner(
            tune.with_resources(_trainable(url, deadline), resources),
            param_space={"slot": tune.grid_search(list(range(remaining)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.parallel, time_budget_s=budget_s),
            run_config=tune.RunConfig(
                name="slmforge-tune",
                storage_path=str(Path(settings.config["out"]) / "ray"),
                verbose=0,
            ),
        )
        errors = [result.error for result in tuner.fit() if result.error is not None]
    finally:
        if started_here:
            ray.shutdown()
    if errors:
        raise RunError(f"{len(errors)} Ray Tune trials failed; first: {errors[0]}")


def _trial_resources(parallel: int) -> dict[str, float]:
    import ray

    total = ray.cluster_resources()
    cpus = max(1.0, float(int(total.get("CPU", 1) // parallel)))
    gpus = 1.0 if total.get("GPU", 0) >= parallel else 0.0
    return {"cpu": cpus, "gpu": gpus} if gpus else {"cpu": cpus}


def _trainable(url: str, deadline: float | None) -> Any:
    def trainable(config: dict[str, Any]) -> None:
        from slmforge.tune.ray_backend import ray_trial

        ray_trial(url, int(config["slot"]), deadline)

    return trainable


def ray_trial(url: str, slot: int, deadline: float | None) -> None:
    """One Tune trial: join the study, run one study trial, report to Ray as it goes."""
    from ray import tune

    study, _ = studies.load_study(url)
    studies.run_trials(
        url,
        studies.space_of(study),
        salt=10_000 + slot,
        deadline=deadline,
        report=tune.report,
        limit=1,
    )
