"""DPO through the fine-tuning jobs API on 127.0.0.1, driven by the official `openai` client as
OpenAI documents it: `method={"type": "dpo", "dpo": {"hyperparameters": {"beta": ...}}}` on the
tiny llama runs to `succeeded` with the reward metrics in its events, checkpoints and results
file; a file of the other shape is refused at create with 400, the param and the line; and
`slmforge jobs create --method dpo --beta` sends the same request."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from slmforge.cli.main import main
from slmforge.config.jobs import JobsServeConfig
from slmforge.data.sample import sample_rows, write_sample
from slmforge.jobs.server import start_jobs_in_thread

pytestmark = pytest.mark.integration

KEY = "sk-test-jobs-dpo-0123456789"
REWARDS = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")


@pytest.fixture
def client(tmp_path) -> Iterator[openai.OpenAI]:
    config = JobsServeConfig(port=0, home=tmp_path / "jobs", api_key=KEY, device="cpu")
    server = start_jobs_in_thread(config)
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    finally:
        server.stop()


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _finished(client: openai.OpenAI, job_id: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_dpo_job_runs_to_succeeded_with_reward_metrics(client, tiny_llama, tmp_path) -> None:
    rows = sample_rows("preference", 48)
    train = client.files.create(
        file=_jsonl(tmp_path / "pairs.jsonl", rows[:40]).open("rb"), purpose="fine-tune"
    )
    valid = client.files.create(
        file=_jsonl(tmp_path / "valid.jsonl", rows[40:]).open("rb"), purpose="fine-tune"
    )
    assert (train.status, valid.status) == ("processed", "processed"), train.status_details

    job = client.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=train.id,
        validation_file=valid.id,
        seed=3,
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.1,
                    "n_epochs": 1,
                    "batch_size": 2,
                    "max_steps": 3,  # slmforge extensions beside OpenAI's hyperparameters
                    "max_seq_len": 96,
                    "save_every": 2,
                }
            },
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    done = _finished(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:llama::") and done.trained_tokens > 0
    assert done.method.dpo.hyperparameters.batch_size == 2

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(e.data["step"] for e in steps) == [1, 2, 3]
    for event in steps:
        assert all(f"train_{name}" in event.data for name in REWARDS), event.data
        assert "reward accuracy=" in event.message
    evals = [e for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert evals and all(f"valid_{name}" in e.data for e in evals for name in REWARDS)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [3, 2]
    assert checkpoints[0].metrics.model_dump()["train_reward_accuracy"] is not None

    (result_file,) = done.result_files
    table = list(csv.DictReader(io.StringIO(client.files.content(result_file).text)))
    assert [int(r["step"]) for r in table] == [1, 2, 3]
    assert all(r["train_reward_margin"] != "" for r in table)
    assert table[-1]["valid_reward_accuracy"] != ""


def test_a_file_of_the_other_shape_is_refused_at_create(client, tiny_llama, tmp_path) -> None:
    pairs = client.files.create(
        file=write_sample(tmp_path / "pairs.jsonl", kind="preference", count=20).open("rb"),
        purpose="fine-tune",
    )
    examples = client.files.create(
        file=write_sample(tmp_path / "travel.jsonl").open("rb"), purpose="fine-tune"
    )
    assert (pairs.status, examples.status) == ("processed", "processed")

    def refused(training: str, validation: str | None, method: dict) -> dict:
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.jobs.create(
                model=str(tiny_llama),
                training_file=training,
                validation_file=validation,
                method=method,
            )
        return raised.value.body

    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    error = refused(examples.id, None, dpo)
    assert (error["param"], error["code"]) == ("training_file", "invalid_training_file")
    assert "for a dpo job: travel.jsonl:1: this is a supervised row" in error["message"]
    error = refused(pairs.id, None, {"type": "supervised"})
    assert error["param"] == "training_file"
    assert "for a supervised job: pairs.jsonl:1: this is a preference row" in error["message"]
    error = refused(pairs.id, examples.id, dpo)
    assert error["param"] == "validation_file" and "travel.jsonl:1" in error["message"]
    error = refused(
        pairs.id, None, {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}
    )
    assert error["param"] == "method.supervised.hyperparameters.beta"

    # a broken pair is found at upload, with its line, and the job naming it is refused
    rows = sample_rows("preference", 4)
    rows[2]["preferred_output"] = rows[2]["non_preferred_output"]
    bad = client.files.create(
        file=_jsonl(tmp_path / "same.jsonl", rows).open("rb"), purpose="fine-tune"
    )
    assert bad.status == "error" and "same.jsonl:3" in bad.status_details
    assert client.fine_tuning.jobs.list().data == []


def test_cli_creates_a_dpo_job_with_beta(client, tiny_llama, tmp_path, capsys) -> None:
    pairs = write_sample(tmp_path / "pairs.jsonl", kind="preference", count=20)
    argv = ["jobs", "create", "--model", str(tiny_llama), "--training-file", str(pairs)]
    argv += ["--method", "dpo", "--beta", "0.25", "-H", "finetune_method=dora"]
    argv += ["-H", "max_steps=50", "--base-url", str(client.base_url), "--api-key", KEY]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    job_id = out.split("created ", 1)[1].split()[0]
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
    client.fine_tuning.jobs.cancel(job_id)
    assert _finished(client, job_id, 30).status == "cancelled"
