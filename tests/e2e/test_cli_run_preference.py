"""`slmforge run` with a DPO finetune stage, as a user types it: sample pairs -> split ->
finetune with `objective: dpo`; a second run is cached, and `--set stages.finetune.beta=...`
trains again (with the new beta) while the data stages stay cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main

pytestmark = pytest.mark.integration

WORKFLOW = """\
runs_dir: runs
stages:
  sample: {out: out/pairs.jsonl, kind: preference, count: 40}
  split: {input: "${sample.output}", out_dir: out/split}
  finetune:
    model: MODEL
    data: ${split.output}/train.jsonl
    out: out/dpo
    objective: dpo
    beta: 0.1
    max_steps: 2
    batch_size: 2
    max_seq_len: 96
    samples: 0
"""


def _run(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> dict[str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["--log-format", "plain", "run", "wf.yaml", *argv])
    err = capsys.readouterr().err
    assert exited.value.code in (0, None), err[-3000:]
    run_id = err.split("run ", 1)[1].split(":", 1)[0]
    record = json.loads((root / "runs" / run_id / "run.json").read_text())
    return {name: stage["status"] for name, stage in record["stages"].items()}


def test_a_changed_beta_trains_the_dpo_stage_again(
    tiny_llama, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yaml").write_text(WORKFLOW.replace("MODEL", str(tiny_llama)), encoding="utf-8")
    assert _run(capsys, tmp_path) == {"sample": "done", "split": "done", "finetune": "done"}
    manifest = read_manifest(tmp_path / "out/dpo")
    assert (manifest.config["objective"], manifest.config["beta"]) == ("dpo", 0.1)
    assert _run(capsys, tmp_path) == {"sample": "cached", "split": "cached", "finetune": "cached"}
    changed = _run(capsys, tmp_path, "--set", "stages.finetune.beta=0.3")
    assert changed == {"sample": "cached", "split": "cached", "finetune": "done"}
    assert read_manifest(tmp_path / "out/dpo").config["beta"] == 0.3
