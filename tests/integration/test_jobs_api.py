"""The fine-tuning jobs API on 127.0.0.1, driven only by the official `openai` client: files,
jobs on the tiny llama, events, checkpoints, cancel, workers, and the fine-tuned model deployed
and called by its `ft:` name."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from slmforge.cli.main import main
from slmforge.config.jobs import JobsServeConfig
from slmforge.data.sample import write_sample
from slmforge.http.host import RunningServer
from slmforge.jobs.server import start_jobs_in_thread
from slmforge.jobs.store import JobStore
from slmforge.processes import process_start
from slmforge.serve import deployments

pytestmark = pytest.mark.integration

KEY = "sk-test-jobs-0123456789"
LONG = {"n_epochs": 1, "batch_size": 2, "max_steps": 5000, "max_seq_len": 64}


def wait_for(check: Callable[[], object], timeout: float = 120, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def finished(client: openai.OpenAI, job_id: str) -> object:
    job = client.fine_tuning.jobs.retrieve(job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def metrics_events(client: openai.OpenAI, job_id: str) -> list:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [e for e in events if e.type == "metrics"]


def worker_gone(home: Path, job_id: str) -> bool:
    job = JobStore(home).get_job(job_id)
    return job.pid is not None and process_start(job.pid) != job.pid_start


@pytest.fixture
def serve_jobs(tmp_path) -> Iterator[Callable[..., tuple[openai.OpenAI, Path]]]:
    started: list[RunningServer] = []

    def start(workers: int = 1) -> tuple[openai.OpenAI, Path]:
        home = tmp_path / "jobs"
        config = JobsServeConfig(port=0, home=home, api_key=KEY, workers=workers, device="cpu")
        server = start_jobs_in_thread(config)
        started.append(server)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        return client, home

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("data") / "train.jsonl")


def test_job_end_to_end(serve_jobs, sample, tiny_llama, tmp_path, monkeypatch, capsys) -> None:
    client, home = serve_jobs(workers=1)
    uploaded = client.files.create(file=sample.open("rb"), purpose="fine-tune")
    assert (uploaded.status, uploaded.filename, uploaded.bytes) == (
        "processed",
        "train.jsonl",
        sample.stat().st_size,
    )
    assert client.files.content(uploaded.id).content == sample.read_bytes()
    assert uploaded.id in [f.id for f in client.files.list().data]
    # content-addressed: the stored bytes are named by their hash, never by the upload's name
    assert [p.name for p in (home / "blobs").iterdir()] == [
        f"{JobStore(home).get_file(uploaded.id)['sha256']}.jsonl"
    ]

    job = client.fine_tuning.jobs.create(
        model=str(tiny_llama),
        training_file=uploaded.id,
        suffix="travel",
        seed=7,
        hyperparameters={"n_epochs": 1, "batch_size": 2, "max_steps": 4, "save_every": 2},
    )
    assert job.status == "queued" and job.object == "fine_tuning.job"
    assert job.hyperparameters.batch_size == 2 and job.seed == 7
    # with one worker a second job waits until the first is done
    second = client.fine_tuning.jobs.create(
        model=str(tiny_llama), training_file=uploaded.id, hyperparameters=LONG
    )
    while (current := client.fine_tuning.jobs.retrieve(job.id)).status in ("queued", "running"):
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
        time.sleep(0.2)
    assert current.status == "succeeded", current.error
    assert current.fine_tuned_model == f"ft:llama:travel:{job.id.removeprefix('ftjob-')[:8]}"
    assert current.trained_tokens > 0

    wait_for(lambda: client.fine_tuning.jobs.retrieve(second.id).status == "running", 30)
    client.fine_tuning.jobs.cancel(second.id)
    assert wait_for(lambda: finished(client, second.id), 15).status == "cancelled"
    wait_for(lambda: worker_gone(home, second.id), 15, "the cancelled job's process to exit")

    losses = [e.data["train_loss"] for e in metrics_events(client, job.id)]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{current.fine_tuned_model}:ckpt-step-4"
    assert checkpoints[0].metrics.train_loss == pytest.approx(losses[0])
    (result_file,) = current.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_file).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]

    listed = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [second.id] and listed.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(after=second.id).data] == [job.id]

    # `slmforge jobs deploy` makes a deployment of the finished job; it answers by its ft: name
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "deploy", job.id, "travel-ft", "--home", str(home)])
    out = capsys.readouterr().out
    assert exited.value.code == 0, out
    url = re.search(r"is up at (\S+)", out).group(1)
    key = re.search(r"api key \(shown once, store it now\): (\S+)", out).group(1)
    try:
        chat = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        assert current.fine_tuned_model in [m.id for m in chat.models.list().data]
        answer = chat.chat.completions.create(
            model=current.fine_tuned_model,
            messages=[{"role": "user", "content": "What should I see in Lisbon?"}],
            max_tokens=8,
        )
        assert answer.model == current.fine_tuned_model
        assert answer.choices[0].message.content
    finally:
        deployments.delete("travel-ft")


def test_bad_requests_are_openai_errors(serve_jobs, sample, tiny_llama, tmp_path) -> None:
    client, home = serve_jobs()
    bad = tmp_path / "bad.jsonl"
    lines = sample.read_text().splitlines()
    lines[1] = '{"prompt": "no response here"'
    lines[3] = '{"prompt": "", "response": "empty prompt"}'
    bad.write_text("\n".join(lines) + "\n")
    uploaded = client.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert uploaded.status == "error"
    assert "bad.jsonl:2" in uploaded.status_details and "bad.jsonl:4" in uploaded.status_details
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=str(tiny_llama), training_file=uploaded.id)
    error = raised.value.body
    assert error["param"] == "training_file" and error["code"] == "invalid_training_file"
    assert "bad.jsonl:2" in error["message"] and "bad.jsonl:4" in error["message"]

    good = client.files.create(file=sample.open("rb"), purpose="fine-tune")
    cases = {
        "hyperparameters.lora_rank": {"hyperparameters": {"lora_rank": 8}},
        "hyperparameters.n_epochs": {"hyperparameters": {"n_epochs": -1}},
        "method": {"method": {"type": "reinforcement"}},
    }
    for param, extra in cases.items():
        with pytest.raises(openai.BadRequestError) as raised:
            client.fine_tuning.jobs.create(model=str(tiny_llama), training_file=good.id, **extra)
        assert raised.value.body["param"] == param, raised.value.body
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=str(tmp_path / "nowhere"), training_file=good.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=str(tiny_llama), training_file="file-missing")
    assert raised.value.body["param"] == "training_file"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).files.list()
    assert client.files.delete(good.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(good.id)
    assert client.fine_tuning.jobs.list().data == []

    # a worker process that dies before finishing its job fails the job with its last words
    JobStore(home).create_job(
        {
            "id": "ftjob-broken",
            "model": "m",
            "fine_tuned_model_name": "ft:m::broken",
            "training_file": uploaded.id,
            "hyperparameters": {},
            "seed": 1,
            "config": {"model": "m"},  # no data, no out: the worker cannot even start
        }
    )
    failed = wait_for(lambda: finished(client, "ftjob-broken"), 60)
    assert failed.status == "failed" and failed.error.code == "worker_exited"
    assert "exited with code 1" in failed.error.message
    assert "validation errors for FinetuneConfig" in failed.error.message


def test_two_workers_train_together_and_cancel(serve_jobs, sample, tiny_llama, capsys) -> None:
    client, home = serve_jobs(workers=2)
    uploaded = client.files.create(file=sample.open("rb"), purpose="fine-tune")
    jobs = [
        client.fine_tuning.jobs.create(
            model=str(tiny_llama), training_file=uploaded.id, hyperparameters=LONG
        )
        for _ in range(2)
    ]
    # both train at once: each has logged a training step while the other still runs
    for job in jobs:
        wait_for(lambda job=job: metrics_events(client, job.id), 120, "a training step")
    assert {client.fine_tuning.jobs.retrieve(j.id).status for j in jobs} == {"running"}
    started = time.monotonic()
    for job in jobs:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    for job in jobs:
        wait_for(lambda job=job: worker_gone(home, job.id), 15, "the worker to exit")
    assert time.monotonic() - started < 15
    assert {client.fine_tuning.jobs.retrieve(j.id).status for j in jobs} == {"cancelled"}
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(jobs[0].id)

    # the jobs CLI reads the same API
    def cli(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(["jobs", *args, "--base-url", str(client.base_url), "--api-key", KEY])
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    code, out, _ = cli("list", "--json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == [j.id for j in reversed(jobs)]
    code, out, _ = cli("show", jobs[0].id)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    code, out, _ = cli("events", jobs[0].id)
    assert code == 0 and "Step 1/5000: training loss=" in out
    assert out.strip().endswith("Fine-tuning job cancelled")
    code, _, err = cli("cancel", jobs[0].id)
    assert code == 1 and "400: Job " in err and "only active jobs can be cancelled" in err
