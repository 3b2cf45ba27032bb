"""`slmforge tune` of a DPO run on the tiny llama: two trials search `beta`, the study maximizes
the trials' held-out reward accuracy, and best.yaml keeps the objective and the best beta."""

from __future__ import annotations

import json

import pytest
import yaml

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main
from slmforge.data.sample import sample_rows
from slmforge.tune.trial import final_eval_value

pytestmark = pytest.mark.integration

SPACE = "params:\n  beta: {type: categorical, choices: [0.05, 0.5]}\n"
BASE = """\
objective: dpo
max_steps: 2
eval_every: 2
batch_size: 2
max_seq_len: 96
target_modules: [q_proj, v_proj]
samples: 0
"""


def test_a_dpo_study_searches_beta_for_reward_accuracy(tiny_llama, tmp_path) -> None:
    rows = sample_rows("preference", 28)
    paths = {}
    for name, part in (("train", rows[:20]), ("eval", rows[20:])):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    for name, text in (("space", SPACE), ("base", BASE)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["tune", "--model", str(tiny_llama), "--data", str(paths["train"])]
    argv += ["--eval-data", str(paths["eval"]), "--space", str(paths["space"])]
    argv += ["--base-config", str(paths["base"]), "--trials", "2", "--sampler", "grid"]
    argv += ["--pruner", "none", "--objective", "eval_reward_accuracy", "--out", str(out)]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code in (0, None)

    manifest = read_manifest(out)
    best = manifest.metrics["best_eval_reward_accuracy"]
    trials = [read_manifest(p) for p in sorted((out / "trials").iterdir())]
    assert sorted(t.config["beta"] for t in trials) == [0.05, 0.5]
    accuracies = [final_eval_value(p, "eval_reward_accuracy") for p in (out / "trials").iterdir()]
    assert best == max(accuracies)
    options = yaml.safe_load((out / "best.yaml").read_text())
    assert options["objective"] == "dpo" and options["beta"] in (0.05, 0.5)
