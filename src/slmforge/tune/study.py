"""The Optuna study behind `slmforge tune`: storage, samplers and pruners, and the trial loop.

The study lives in SQLite (`OUT/study.db`) or any Optuna storage URL. Its user attributes
hold the `Settings`, so any process that can open the storage can join: `--parallel K` starts
K-1 worker processes (`python -m slmforge.tune.worker`), a second `slmforge tune --resume` on
the same OUT joins a running search, and Ray Tune trials do the same from Ray workers.

Trials are asked and told explicitly (not `study.optimize`) so the budget counts finished
trials of every process, and a trial whose process died is found without waiting for a
heartbeat: each running trial records its host, pid and the pid's start time; a trial left
RUNNING by a process that no longer exists is marked failed, its half-written folder removed,
and its parameters enqueued again, so a killed search loses only the trial it was running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.errors import ConfigError, InputError, Interrupted, RunError, SlmforgeError
from slmforge.processes import process_start
from slmforge.tune.space import Space
from slmforge.tune.trial import (
    SETTINGS_ATTR,
    STUDY_NAME,
    BudgetReached,
    Settings,
    run_trial,
    trial_dir,
)

MAX_FAILURES_IN_A_ROW = 3


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{Path(out).resolve() / 'study.db'}"


def _storage(url: str) -> Any:
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(url: str, settings: Settings, space: Space) -> Any:
    """A new study holding `settings`, with the space's first trials enqueued."""
    import optuna

    _quiet_optuna()
    study = optuna.create_study(
        storage=_storage(url), study_name=STUDY_NAME, direction=settings.direction
    )
    study.set_user_attr(SETTINGS_ATTR, settings.to_attrs())
    study.set_user_attr("space", {n: p.model_dump() for n, p in space.params.items()})
    for point in space.first:
        study.enqueue_trial(space.labels(point), user_attrs={"first": True})
    return study


def load_study(url: str) -> tuple[Any, Settings]:
    import optuna

    _quiet_optuna()
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=_storage(url))
    except KeyError:
        raise InputError(f"{url}: no slmforge tune study there; run without --resume") from None
    return study, Settings.from_attrs(study.user_attrs[SETTINGS_ATTR])


def space_of(study: Any) -> Space:
    """The study's search space (without its first trials, which were enqueued at creation)."""
    from slmforge.tune.space import SpaceFile

    return Space(SpaceFile.model_validate({"params": study.user_attrs["space"]}).params, [])


def check_same_study(study: Any, settings: Settings, space: Space) -> None:
    """A resumed study must be searching the same thing."""
    old = Settings.from_attrs(study.user_attrs[SETTINGS_ATTR]).identity()
    new = settings.identity()
    changed = [k for k, v in new["config"].items() if old["config"].get(k) != v]
    changed += [k for k in ("base", "eval_every") if old[k] != new[k]]
    if study.user_attrs.get("space") != {n: p.model_dump() for n, p in space.params.items()}:
        changed.append("space")
    if changed:
        raise ConfigError(
            f"the study in {settings.config['out']} was started with different "
            f"{', '.join(sorted(set(changed)))}; resume with the same options or pass --force"
        )


def make_sampler(settings: Settings, space: Space, salt: int) -> Any:
    """The sampler of one process; `salt` keeps processes and resumed runs from repeating
    each other's random draws."""
    import optuna

    cfg = settings.tune
    seed = cfg.seed + salt
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """Optuna's grid sampler calls `study.stop()` after the grid's last trial, which
            raises outside `study.optimize`; our ask/tell loop stops at the grid's size itself
            (`budget`)."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return AskTellGridSampler(space.grid(), seed=seed)
    startup = max(2, min(10, cfg.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(settings: Settings) -> Any:
    import optuna

    cfg = settings.tune
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.eval_every,
            max_resource=max(settings.total_steps, settings.eval_every),
            reduction_factor=3,
        )
    return optuna.pruners.NopPruner()


def counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    result = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name.lower()] += 1
    result["finished"] = result["complete"] + result["pruned"]
    return result


def budget(settings: Settings, space: Space) -> int:
    cfg = settings.tune
    return min(cfg.trials, space.grid_size()) if cfg.sampler == "grid" else cfg.trials


# -- dead trials -------------------------------------------------------------------------------
def _mark_running(trial: Any) -> None:
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("pid_started", process_start(os.getpid()))


def reap_dead_trials(study: Any, settings: Settings) -> int:
    """Fail and re-enqueue RUNNING trials whose process (on this host) is gone."""
    from optuna.trial import TrialState

    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != socket.gethostname() or "pid" not in attrs:
            continue
        if process_start(attrs["pid"]) == attrs.get("pid_started"):
            continue  # still running
        retry_later(study, settings, trial, "its process died")
        reaped += 1
    return reaped


def retry_later(study: Any, settings: Settings, trial: Any, why: str) -> None:
    """Mark a trial that did not finish as failed and enqueue its parameters again."""
    from optuna.trial import TrialState

    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (RuntimeError, ValueError):
        return  # another process got there first
    study.set_user_attr(f"trial_{trial.number}_stopped", why)
    shutil.rmtree(trial_dir(settings, trial.number), ignore_errors=True)
    partial = trial_dir(settings, trial.number)
    shutil.rmtree(partial.parent / f"{partial.name}.partial", ignore_errors=True)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    progress.warn(f"trial {trial.number} did not finish ({why}); it will be run again")


# -- the loop ----------------------------------------------------------------------------------
def run_trials(
    url: str,
    space: Space,
    salt: int,
    deadline: float | None,
    report: Any = None,
    limit: int | None = None,
) -> int:
    """Ask, train and tell trials until the study has its budget of finished trials, time is
    up, or `limit` trials ran here; returns the trials this process finished."""
    import optuna
    from optuna.trial import TrialState

    study, settings = load_study(url)
    study.sampler = make_sampler(settings, space, salt + len(study.get_trials(deepcopy=False)))
    study.pruner = make_pruner(settings)
    wanted = budget(settings, space)
    done_here, failures = 0, 0
    with progress.task("Tuning", total=wanted) as bar:
        while limit is None or done_here < limit:
            reap_dead_trials(study, settings)
            state = counts(study)
            bar.update(completed=state["finished"], pruned=state["pruned"])
            if state["finished"] + state["running"] >= wanted:
                break
            if deadline is not None and time.time() >= deadline:
                progress.warn("time budget reached; --resume continues the study")
                break
            trial = study.ask()
            if _surplus(study, trial, wanted):
                study.tell(trial, state=TrialState.FAIL)  # another process took the last slot
                study.set_user_attr(f"trial_{trial.number}_stopped", "surplus, not run")
                break
            _mark_running(trial)
            values = {n: space.value(n, v) for n, v in space.suggest(trial).items()}
            try:
                value = run_trial(settings, trial, values, deadline, report)
            except BudgetReached as stop:
                retry_later(study, settings, trial, str(stop))
                break
            except (Interrupted, KeyboardInterrupt):
                retry_later(study, settings, trial, "interrupted")
                raise Interrupted(
                    f"interrupted; the study in {settings.config['out']} keeps its finished "
                    "trials: run the same command with --resume to continue"
                ) from None
            except optuna.TrialPruned as pruned:
                study.tell(trial, state=TrialState.PRUNED)
                progress.info(f"trial {trial.number}: {pruned}")
                done_here, failures = done_here + 1, 0
                continue
            except SlmforgeError as err:
                study.tell(trial, state=TrialState.FAIL)
                study.set_user_attr(f"trial_{trial.number}_error", str(err))
                progress.warn(f"trial {trial.number} failed: {err}")
                failures += 1
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise RunError(f"{failures} trials in a row failed; last: {err}") from err
                continue
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, value)
            if report is not None:  # Ray records the study trial and its objective too
                report({"trial": trial.number, settings.config["objective"]: value})
            progress.info(f"trial {trial.number}: {settings.config['objective']} {value:.4f}")
            done_here, failures = done_here + 1, 0
        state = counts(study)
        bar.update(completed=state["finished"], pruned=state["pruned"])
    return done_here


def _surplus(study: Any, trial: Any, wanted: int) -> bool:
    """True when processes asked for more trials than the budget at the same moment and this
    is the newest of the running ones (the others go ahead)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if counts(study)["finished"] + len(running) <= wanted:
        return False
    return trial.number == max(t.number for t in running)


def prepare_out(out: Path, url: str, resume: bool, force: bool, default_storage: bool) -> None:
    """The --resume/--force rule for a study folder."""
    if force:
        shutil.rmtree(out, ignore_errors=True)
        if not default_storage:
            import optuna

            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=STUDY_NAME, storage=_storage(url))
    elif out.exists() and not resume:
        raise InputError(
            f"{out} already exists; pass --resume to continue (or join) its study or --force "
            "to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
