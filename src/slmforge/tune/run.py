"""`slmforge tune`: check -> study -> trials (local processes or Ray Tune) -> outputs.

Everything that can be checked is checked before the first trial: the space against
FinetuneConfig and the training objective, the base config, the objective, a trial's full
config, the inputs, and the
--resume/--force rule. Then the study is created (or loaded and compared, on --resume) and the
backend runs trials until the study holds `--trials` finished ones or `--timeout-s` passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from slmforge import progress
from slmforge.config.tune import TuneConfig
from slmforge.errors import InputError, MissingDependencyError, RunError
from slmforge.tune import study as studies
from slmforge.tune.report import TuneResult, write_outputs
from slmforge.tune.space import CategoricalParam, Space, load_space
from slmforge.tune.trial import SETTINGS_ATTR, finetune_config, make_settings


def tune(cfg: TuneConfig) -> TuneResult:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise MissingDependencyError("optuna", "tune", "slmforge tune") from None
    space = load_space(cfg.space)
    if cfg.sampler == "grid":
        space.grid()
    for path, option in ((cfg.data, "--data"), (cfg.eval_data, "--eval-data")):
        if not Path(path).exists():
            raise InputError(f"{option}: {path} not found")
    settings = make_settings(cfg, space.params)
    space.check_objective(settings.finetune_objective)
    finetune_config(settings, _probe_point(space), Path(settings.config["out"]) / "probe")
    out = Path(settings.config["out"])
    url = studies.storage_url(out, cfg.storage)
    studies.prepare_out(out, url, cfg.resume, cfg.force, cfg.storage is None)
    if cfg.resume:
        study, _ = studies.load_study(url)
        studies.check_same_study(study, settings, space)
        study.set_user_attr(SETTINGS_ATTR, settings.to_attrs())  # a new budget or deadline
    else:
        studies.create_study(url, settings, space)
    deadline = time.time() + cfg.timeout_s if cfg.timeout_s else None
    if cfg.backend == "ray":
        from slmforge.tune.ray_backend import run_with_ray

        run_with_ray(url, settings, space, deadline)
    else:
        _run_local(url, cfg, space, deadline)
    study, settings = studies.load_study(url)
    return write_outputs(study, space, settings, studies.counts(study))


def _probe_point(space: Space) -> dict[str, object]:
    """One value per parameter, so a trial config is validated before the study starts."""
    values = {}
    for name, param in space.params.items():
        values[name] = param.choices[0] if isinstance(param, CategoricalParam) else param.low
    return values


def _run_local(url: str, cfg: TuneConfig, space: Space, deadline: float | None) -> None:
    """This process runs trials; `--parallel K` adds K-1 worker processes on the same study."""
    threads = max(1, (os.cpu_count() or 1) // cfg.parallel)
    workers = [_start_worker(url, index, deadline, threads) for index in range(1, cfg.parallel)]
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        studies.run_trials(url, space, salt=0, deadline=deadline)
    finally:
        torch.set_num_threads(previous)
        codes = [worker.wait() for worker in workers]
    failed = [code for code in codes if code not in (0, None)]
    if failed:
        raise RunError(f"{len(failed)} worker processes failed (exit codes {failed})")


def _start_worker(url: str, index: int, deadline: float | None, threads: int):
    from slmforge.tune.worker import die_with_parent

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "slmforge.tune.worker", url, str(index), str(deadline or "")]
    progress.info(f"started tune worker {index}")
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)
