"""`slmforge tune` input checks: the search space, the base config and the options fail before
any trial, with the file, line and field a user has to fix."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from data_helpers import write_jsonl
from slmforge.cli.main import main
from slmforge.config.tune import TuneConfig
from slmforge.errors import ConfigError
from slmforge.tune.space import load_space
from slmforge.tune.trial import finetune_config, make_settings


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "params:\n  lr: {type: float, low: 1.0e-4, high: 0.1}\n  lora_rank: {type: int, "
            "low: 1, high: 8}\n",
            r"space.yaml:3: params.lora_rank: not a finetune option, did you mean lora_r\?",
        ),
        (
            "params:\n  data: {type: categorical, choices: [a.jsonl]}\n",
            r"space.yaml:2: params.data: fixed for the whole study",
        ),
        (
            "params:\n  lora_r: {type: categorical, choices: [8, 0]}\n",
            r"space.yaml:2: params.lora_r.choices\[1\]: Input should be greater than 0",
        ),
        (
            "params:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
            r"space.yaml:2: params.lr: low 0.1 must be below high 0.01",
        ),
        (
            "params:\n  lr: {type: float, low: 0, high: 0.01, log: true}\n",
            r"space.yaml:2: params.lr: a log range needs low > 0",
        ),
        (
            "params:\n  lr: {type: real, low: 0, high: 1}\n",
            r"space.yaml:2: params.lr: Input tag 'real' found",
        ),
        (
            "params:\n  lr: {type: float, low: 1.0e-4, high: 0.1}\nfirst:\n  - {lr: 2.0}\n",
            r"space.yaml:3: first\[0\].lr: 2.0 is outside \[0.0001, 0.1\]",
        ),
        ("params: {}\n", r"space.yaml: params: Dictionary should have at least 1 item"),
    ],
)
def test_space_errors_name_file_line_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, text))


def test_list_choices_travel_as_labels_and_grid():
    space = load_space(None)
    assert set(space.params) == {"lr", "lora_r", "lora_alpha", "lora_dropout"}
    with pytest.raises(ConfigError, match="--sampler grid: lr is a float range without a step"):
        space.grid()


def test_suggest_turns_labels_back_into_values(tmp_path):
    space = load_space(
        _space(
            tmp_path,
            "params:\n  target_modules: {type: categorical, choices: [[q_proj, v_proj], "
            "[all-linear]]}\n  max_steps: {type: int, low: 2, high: 6, step: 2}\n",
        )
    )
    values = space.suggest(
        optuna.trial.FixedTrial({"target_modules": "q_proj,v_proj", "max_steps": 4})
    )
    assert values == {"target_modules": ["q_proj", "v_proj"], "max_steps": 4}
    assert space.grid() == {
        "target_modules": ["q_proj,v_proj", "all-linear"],
        "max_steps": [2, 4, 6],
    }
    assert space.grid_size() == 6


def _config(tmp_path: Path, **options) -> TuneConfig:
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(12)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    return TuneConfig(model="m", data=data, eval_data=data, out=tmp_path / "out", **options)


def test_base_config_and_objective_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("out: somewhere\n")
    with pytest.raises(ConfigError, match=r"base.yaml: out: set by `slmforge tune`"):
        make_settings(_config(tmp_path, base_config=base), {})
    base.write_text("max_step: 4\n")
    with pytest.raises(ConfigError, match=r"base.yaml: max_step: unknown field, did you mean"):
        make_settings(_config(tmp_path, base_config=base), {})
    with pytest.raises(ConfigError, match=r"--objective 'bleu2': unknown \(known: eval_loss"):
        make_settings(_config(tmp_path, objective="bleu2"), {})


def test_eval_cadence_and_trial_config(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("max_steps: 8\nbatch_size: 2\nmax_seq_len: 64\n")
    settings = make_settings(_config(tmp_path, base_config=base, evals_per_trial=4), {})
    assert (settings.eval_every, settings.total_steps, settings.direction) == (2, 8, "minimize")
    cfg = finetune_config(settings, {"lr": 0.01}, tmp_path / "t")
    assert (cfg.lr, cfg.max_steps, cfg.eval_every, cfg.batch_size) == (0.01, 8, 2, 2)
    # without max_steps: one epoch of 12 rows at 4 per step is 3 steps
    assert make_settings(_config(tmp_path), {}).total_steps == 3


def test_cli_refuses_an_existing_out_without_resume(tmp_path, capsys):
    cfg = _config(tmp_path)
    cfg.out.mkdir()
    argv = ["tune", "--model", "m", "--data", str(cfg.data), "--eval-data", str(cfg.data)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(cfg.out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists; pass --resume to continue (or join) its study or --force" in err
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(cfg.out), "--resume", "--force"])
    assert exit_info.value.code == 2
    assert "--resume and --force contradict each other" in capsys.readouterr().err
