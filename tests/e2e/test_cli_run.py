"""`slmforge run` and `slmforge clean` as a user types them: caching, --force, resume, clean-up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slmforge.cli.main import main

DATA_WORKFLOW = """\
runs_dir: runs
stages:
  sample: {out: out/data/travel.jsonl}
  convert:
    input: ${sample.output}
    out: out/data/chat.jsonl
    system_prompt: You are a helpful travel assistant.
  split: {input: "${convert.output}", out_dir: out/data/split, test: 0.1}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["--log-format", "plain", *argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


def listing(root: Path) -> dict[str, str]:
    """Every path below `root` with its content (files) or "/" (folders)."""
    return {
        p.relative_to(root).as_posix(): "/" if p.is_dir() else p.read_text(errors="replace")
        for p in sorted(root.rglob("*"))
    }


def statuses(root: Path, err: str) -> dict[str, str]:
    run_id = err.split("run ", 1)[1].split(":", 1)[0]
    record = json.loads((root / "runs" / run_id / "run.json").read_text())
    return {name: stage["status"] for name, stage in record["stages"].items()}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yaml").write_text(DATA_WORKFLOW, encoding="utf-8")
    # a file of the user's own beside the outputs: clean must leave it (and its folder) alone
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine", encoding="utf-8")
    return tmp_path


def test_run_caches_forces_dependents_and_clean_restores_the_folder(workdir: Path, capsys) -> None:
    before = listing(workdir)
    code, out, err = run(capsys, "run", "wf.yaml", "--dry-run")
    assert code == 0, err
    assert "3 to run, 0 cached (dry run)" in out and "no earlier run" in out
    assert listing(workdir) == before

    code, out, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    assert statuses(workdir, err) == {"sample": "done", "convert": "done", "split": "done"}
    assert (workdir / "out/data/split/train.jsonl").is_file()
    assert "ran 3, cached 0" in out

    code, out, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    assert statuses(workdir, err) == {"sample": "cached", "convert": "cached", "split": "cached"}
    assert "stage split (split): cached, unchanged since run" in err

    code, out, err = run(capsys, "run", "wf.yaml", "--force", "convert")
    assert code == 0, err
    assert statuses(workdir, err) == {"sample": "cached", "convert": "done", "split": "done"}

    code, out, err = run(
        capsys, "run", "wf.yaml", "--set", "stages.convert.system_prompt=Be brief.", "--dry-run"
    )
    assert code == 0, err
    assert "2 to run, 1 cached (dry run)" in out and "its config or inputs changed" in out

    code, out, err = run(capsys, "clean", "--all", "--dry-run")
    assert code == 0, err
    assert "3 run(s): 3 path(s), 0 deployment(s) would be removed (dry run)" in out
    assert (workdir / "out/data/chat.jsonl").is_file()

    code, out, err = run(capsys, "clean", "--all")  # no terminal: must not delete unasked
    assert code == 2 and "pass --yes" in err
    code, out, err = run(capsys, "clean", "--all", "--yes")
    assert code == 0, err
    assert listing(workdir) == before


def test_failed_stage_stops_the_run_and_the_rerun_continues_there(workdir: Path, capsys) -> None:
    before = listing(workdir)
    bad = DATA_WORKFLOW.replace('input: "${convert.output}"', "input: out/data/missing.jsonl")
    (workdir / "wf.yaml").write_text(bad, encoding="utf-8")
    code, out, err = run(capsys, "run", "wf.yaml")
    assert code == 2
    assert "error: stage split (split) failed: " in err and "missing.jsonl" in err
    assert statuses(workdir, err) == {"sample": "done", "convert": "done", "split": "failed"}
    first_run = err.split("run ", 1)[1].split(":", 1)[0]

    (workdir / "wf.yaml").write_text(DATA_WORKFLOW, encoding="utf-8")
    code, out, err = run(capsys, "run", "wf.yaml", "--dry-run")
    assert "split (split): run, its config or inputs changed since run" in out
    code, out, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    assert statuses(workdir, err) == {"sample": "cached", "convert": "cached", "split": "done"}
    assert f"cached, unchanged since run {first_run}" in err

    code, _, err = run(capsys, "clean", "--all", "--yes")
    assert code == 0, err
    assert listing(workdir) == before


def test_clean_one_run_removes_only_what_it_created(workdir: Path, capsys) -> None:
    code, _, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    first = err.split("run ", 1)[1].split(":", 1)[0]
    code, _, err = run(capsys, "run", "wf.yaml", "--force", "split")
    assert code == 0, err
    second = err.split("run ", 1)[1].split(":", 1)[0]
    # the second run replaced the split, so it owns it now; the first keeps sample and convert
    code, _, err = run(capsys, "clean", first, "--yes")
    assert code == 0, err
    assert not (workdir / "out/data/chat.jsonl").exists()
    assert (workdir / "out/data/split/train.jsonl").is_file()
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == [second]
    code, _, err = run(capsys, "clean", "nope", "--yes")
    assert code == 2 and "no run 'nope'" in err


def test_existing_output_no_run_created_fails_before_any_work(workdir: Path, capsys) -> None:
    (workdir / "out/data").mkdir(parents=True)
    (workdir / "out/data/chat.jsonl").write_text("my own file\n", encoding="utf-8")
    code, _, err = run(capsys, "run", "wf.yaml")
    assert code == 2
    assert "stage convert: out/data/chat.jsonl exists and no slmforge run created it" in err
    assert not (workdir / "out/data/travel.jsonl").exists() and not (workdir / "runs").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("convert:", "convrt:"),
            "stages.convrt: unknown stage kind 'convrt', did you mean convert?",
        ),
        (("test: 0.1", "tset: 0.1"), "stages.split.tset: unknown field, did you mean test?"),
        (
            ("${convert.output}", "${conver.output}"),
            "stages.split.input: reference to unknown stage 'conver', did you mean convert?",
        ),
        (
            ("sample: {out: out/data/travel.jsonl}", "sample: {out: '${split.output}/x'}"),
            "stages: cycle between stages: sample -> split -> convert -> sample",
        ),
    ],
)
def test_bad_workflow_fails_before_any_work(workdir: Path, capsys, edit, message: str) -> None:
    before = listing(workdir)
    text = DATA_WORKFLOW.replace(*edit)
    (workdir / "wf.yaml").write_text(text, encoding="utf-8")
    before["wf.yaml"] = text
    code, _, err = run(capsys, "run", "wf.yaml")
    assert code == 2
    assert f"error: wf.yaml: {message}" in err or (
        "error: wf.yaml: stages" in err and message in err
    )
    assert listing(workdir) == before


@pytest.mark.integration
def test_finetune_change_reruns_finetune_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, tiny_llama: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yaml").write_text(
        DATA_WORKFLOW
        + f"""\
  finetune:
    model: {tiny_llama}
    data: ${{split.output}}/train.jsonl
    out: out/adapter
    max_steps: 1
    batch_size: 2
    max_seq_len: 64
    samples: 0
  merge: {{adapter: "${{finetune.output}}", out: out/merged}}
""",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    assert set(statuses(tmp_path, err).values()) == {"done"}
    assert re.search(r"^finetune: train loss \d+\.\d+ -> \d+\.\d+ .* in 1 steps$", out, re.M)
    assert json.loads((tmp_path / "out/merged/slmforge.json").read_text())["kind"]
    code, _, err = run(capsys, "run", "wf.yaml")
    assert code == 0, err
    assert set(statuses(tmp_path, err).values()) == {"cached"}
    code, out, err = run(capsys, "run", "wf.yaml", "--set", "stages.finetune.lr=1e-3", "--dry-run")
    assert code == 0, err
    assert "finetune (finetune): run, its config or inputs changed since run" in out
    assert "merge (merge): run, it needs finetune, which runs" in out
    for name in ("sample", "convert", "split"):
        assert f"{name} ({name}): cached, unchanged since run" in out


@pytest.mark.integration
def test_deploy_stage_hands_its_key_on_and_clean_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, tiny_llama: Path
) -> None:
    from slmforge.serve import deployments

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLMFORGE_API_KEY", raising=False)
    (work / "wf.yaml").write_text(
        f"""\
stages:
  sample: {{out: out/travel.jsonl}}
  deploy: {{name: wf-bot, model: {tiny_llama}, key_file: out/wf-bot.key}}
  eval:
    after: [deploy]
    data: ${{sample.output}}
    target: [served=deploy:wf-bot]
    metrics: [f1]
    limit: 2
    max_tokens: 4
    out: out/eval
""",
        encoding="utf-8",
    )
    before = listing(work)
    try:
        code, out, err = run(capsys, "run", "wf.yaml")
        assert code == 0, err
        assert statuses(work, err) == {"sample": "done", "deploy": "done", "eval": "done"}
        assert re.search(r"^eval: served: f1 \d\.\d{3}, \d+ tokens/s \(p50\)$", out, re.M), out
        assert "eval: report: out/eval/report.html" in out
        assert (work / "out/wf-bot.key").stat().st_mode & 0o777 == 0o600
        assert "SLMFORGE_API_KEY" not in __import__("os").environ  # handed on only during the run
        (deployment,) = deployments.all_deployments()
        assert deployments.alive(deployment)
        code, _, err = run(capsys, "run", "wf.yaml")
        assert code == 0, err
        assert set(statuses(work, err).values()) == {"cached"}

        code, out, err = run(capsys, "clean", "--all", "--yes")
        assert code == 0, err
        assert "stop deployment wf-bot" in out
        assert deployments.all_deployments() == [] and not deployments.alive(deployment)
        assert listing(work) == before
    finally:
        for leftover in deployments.all_deployments():
            deployments.delete(leftover.name)
