"""`slmforge tune --backend ray`: Ray Tune runs two trials of the study at the same time on
this machine (a local Ray with 2 CPUs, one per trial, no dashboard)."""

from __future__ import annotations

import optuna
import pytest

from slmforge.config.tune import TuneConfig
from slmforge.tune.run import tune
from slmforge.tune.trial import STUDY_NAME
from tune_helpers import write_inputs

pytestmark = pytest.mark.integration


def test_ray_backend_runs_two_trials_in_parallel(tiny_llama, tmp_path):
    paths = write_inputs(tmp_path)
    paths["space"].write_text(
        "params:\n  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n", encoding="utf-8"
    )
    out = tmp_path / "out"
    result = tune(
        TuneConfig(
            model=str(tiny_llama),
            data=paths["train"],
            eval_data=paths["eval"],
            space=paths["space"],
            base_config=paths["base"],
            out=out,
            trials=2,
            parallel=2,
            backend="ray",
            pruner="none",
        )
    )
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    first, second = complete
    assert first.datetime_start < second.datetime_complete
    assert second.datetime_start < first.datetime_complete  # the two trials overlapped
    assert {t.user_attrs["pid"] for t in complete} != {None} and len(
        {t.user_attrs["pid"] for t in complete}
    ) == 2  # each in its own Ray worker
    assert (out / "ray" / "slmforge-tune").is_dir()
    assert result.best_yaml.is_file() and (result.best_adapter / "slmforge.json").is_file()
