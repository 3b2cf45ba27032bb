"""`slmforge tune` on the tiny Llama, as a user runs it: a 6-trial search is killed after two
finished trials, resumed (with a second worker process joining the study), prunes the trial
whose learning rate is 100x too high, and writes a best.yaml that `slmforge finetune --config`
reproduces. One search is shared by every test here (it is the expensive part)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main
from slmforge.tune.trial import STUDY_NAME
from tune_helpers import write_inputs

pytestmark = pytest.mark.integration


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def search(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    paths = write_inputs(root)
    out = root / "out"
    argv = [
        *(sys.executable, "-m", "slmforge", "--log-format", "plain", "tune"),
        *("--model", str(tiny_llama), "--data", str(paths["train"])),
        *("--eval-data", str(paths["eval"]), "--space", str(paths["space"])),
        *("--base-config", str(paths["base"]), "--trials", "6", "--seed", "1"),
        *("--out", str(out)),
    ]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    told = 0
    for line in first.stderr:  # kill as soon as the second trial is recorded as finished
        told += bool(re.match(r"trial \d+: eval_loss", line))
        if told == 2:
            break
    first.kill()
    first.wait()
    first.stderr.close()
    assert told == 2, "the first search ended before finishing two trials"
    before = {t.number: t for t in _study(out).trials}
    resumed = subprocess.run(
        [*argv, "--resume", "--parallel", "2"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {"out": out, "before": before, "after": _study(out), "log": resumed.stderr, **paths}


def test_killed_search_resumes_without_repeating_finished_trials(search):
    before, study = search["before"], search["after"]
    finished_before = {n for n, t in before.items() if t.state.is_finished()}
    assert {0, 1} <= finished_before
    after = {t.number: t for t in study.trials}
    for number in finished_before:  # recorded once, never run again
        assert after[number].state == before[number].state
        assert after[number].datetime_complete == before[number].datetime_complete
    retried = [t.user_attrs.get("retry_of") for t in study.trials if "retry_of" in t.user_attrs]
    assert not set(retried) & finished_before
    killed = [n for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING]
    for number in killed:  # the trial that was running when the process died is run again
        assert after[number].state == optuna.trial.TrialState.FAIL
        assert number in retried
    states = [t.state for t in study.trials]
    finished = [s for s in states if s.is_finished() and s != optuna.trial.TrialState.FAIL]
    assert len(finished) == 6


def test_clearly_bad_trial_is_pruned_and_kept_as_an_artifact(search):
    study, out = search["after"], search["out"]
    bad = [t for t in study.trials if t.params.get("lr") == 3.0 and t.state.is_finished()]
    assert [t.state for t in bad][-1] == optuna.trial.TrialState.PRUNED
    manifest = read_manifest(out / "trials" / f"trial-{bad[-1].number:04d}")
    assert manifest.kind == "adapter"
    assert manifest.details["stopped_early"]["step"] == 2
    for trial in study.trials:
        if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            assert read_manifest(out / "trials" / f"trial-{trial.number:04d}") is not None


def test_outputs_report_and_manifest(search):
    out, study = search["out"], search["after"]
    manifest = read_manifest(out)
    assert manifest.kind == "tune"
    assert manifest.metrics["best_trial"] == study.best_trial.number
    assert manifest.metrics["best_eval_loss"] == pytest.approx(study.best_value)
    best = read_manifest(out / "best")
    assert best.kind == "adapter" and (out / "best" / "adapter_model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert f"| {study.best_trial.number} **(best)** | complete |" in report
    assert "![history](history.png)" in report and "![importance](importance.png)" in report
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert len((out / "trials.csv").read_text().splitlines()) == len(study.trials) + 1


def test_best_yaml_reproduces_the_best_trial(search, tmp_path):
    out, study = search["out"], search["after"]
    best_yaml = out / "best.yaml"
    options = yaml.safe_load(best_yaml.read_text())
    assert options["lr"] == pytest.approx(study.best_params["lr"])
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--config", str(best_yaml), "--out", str(tmp_path / "again")])
    assert exit_info.value.code in (0, None)
    again = read_manifest(tmp_path / "again").metrics["eval_loss_final"]
    assert again == pytest.approx(study.best_value, abs=1e-3)
