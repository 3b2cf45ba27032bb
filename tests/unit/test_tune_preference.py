"""`slmforge tune` for preference objectives: a space may search `beta` (and orpo_lambda,
simpo_gamma) only for an objective that reads it, the objective itself is fixed, and the study
can maximize the trials' eval reward accuracy. Every mistake fails before any trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_helpers import write_jsonl
from slmforge.cli.main import main
from slmforge.config.tune import TuneConfig
from slmforge.errors import ConfigError
from slmforge.tune.space import load_space
from slmforge.tune.trial import final_eval_value, finetune_config, make_settings

PAIRS = [
    {"prompt": f"Where to {i}?", "chosen": f"Lisbon {i}.", "rejected": "No idea."}
    for i in range(12)
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _config(tmp_path: Path, base: str, **options) -> TuneConfig:
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    return TuneConfig(
        model="m",
        data=data,
        eval_data=data,
        out=tmp_path / "out",
        base_config=_write(tmp_path, "base.yaml", base),
        **options,
    )


def test_a_dpo_study_searches_beta_and_maximizes_reward_accuracy(tmp_path: Path) -> None:
    space = load_space(
        _write(tmp_path, "space.yaml", "params:\n  beta: {type: float, low: 0.05, high: 0.5}\n")
    )
    cfg = _config(tmp_path, "objective: dpo\nmax_steps: 4\n", objective="eval_reward_accuracy")
    settings = make_settings(cfg, space.params)
    space.check_objective(settings.finetune_objective)
    assert (settings.finetune_objective, settings.direction) == ("dpo", "maximize")
    trial = finetune_config(settings, {"beta": 0.2}, tmp_path / "t")
    assert (trial.objective, trial.beta) == ("dpo", 0.2)
    # without max_steps a trial's steps count the pairs (12 pairs, 4 per step)
    settings = make_settings(_config(tmp_path, "objective: simpo\n"), {})
    assert settings.total_steps == 3


@pytest.mark.parametrize(
    ("space", "base", "message"),
    [
        (
            "params:\n  lr: {type: float, low: 1.0e-5, high: 1.0e-3}\n"
            "  beta: {type: categorical, choices: [0.1, 0.3]}\n",
            "max_steps: 4\n",
            r"space.yaml:3: params.beta: does not apply to objective sft \(it applies to dpo, "
            r"simpo\); set `objective: dpo` in --base-config to search it",
        ),
        (
            "params:\n  orpo_lambda: {type: float, low: 0.05, high: 0.5}\n",
            "objective: dpo\n",
            r"space.yaml:2: params.orpo_lambda: does not apply to objective dpo \(it applies "
            r"to orpo\)",
        ),
    ],
)
def test_an_option_of_another_objective_is_refused_with_its_line(
    tmp_path: Path, space: str, base: str, message: str
) -> None:
    loaded = load_space(_write(tmp_path, "space.yaml", space))
    settings = make_settings(_config(tmp_path, base), loaded.params)
    with pytest.raises(ConfigError, match=message):
        loaded.check_objective(settings.finetune_objective)


def test_the_objective_itself_is_fixed(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "space.yaml", "params:\n  objective: {type: categorical, choices: [dpo, orpo]}\n"
    )
    with pytest.raises(ConfigError, match=r"space.yaml:2: params.objective: one objective per"):
        load_space(path)


def test_objectives_that_do_not_fit_the_training_objective(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--objective eval_reward_accuracy: only preference"):
        make_settings(_config(tmp_path, "max_steps: 4\n", objective="eval_reward_accuracy"), {})
    with pytest.raises(ConfigError, match=r"--objective rougeL: scores answers against"):
        make_settings(_config(tmp_path, "objective: dpo\n", objective="rougeL"), {})


def test_cli_refuses_beta_for_sft_before_any_trial(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, "max_steps: 4\n")
    space = _write(tmp_path, "space.yaml", "params:\n  beta: {type: float, low: 0.05, high: 1}\n")
    argv = ["tune", "--model", "m", "--data", str(cfg.data), "--eval-data", str(cfg.data)]
    argv += ["--space", str(space), "--base-config", str(cfg.base_config), "--out", str(cfg.out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "space.yaml:2: params.beta: does not apply to objective sft" in capsys.readouterr().err
    assert not cfg.out.exists()


def test_final_eval_value_reads_the_last_evaluation(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "eval_loss": 0.7, "eval_reward_accuracy": 0.5},
            {"step": 2, "loss": 0.6, "reward_accuracy": 0.75},
            {"step": 2, "eval_loss": 0.4, "eval_reward_accuracy": 0.875},
        ],
    )
    assert final_eval_value(tmp_path, "eval_reward_accuracy") == 0.875
    with pytest.raises(Exception, match="no evaluation logged eval_reward_margin"):
        final_eval_value(tmp_path, "eval_reward_margin")
