"""`slmforge serve-jobs` as a process: SIGKILL it during a job and start it again; the store
opens, the interrupted job resumes from its checkpoint with --resume-interrupted or is reported
failed without it, and files and finished jobs are intact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from slmforge.data.sample import write_sample
from slmforge.http.binding import free_port
from slmforge.jobs.store import JobStore
from slmforge.processes import process_start

pytestmark = pytest.mark.integration

KEY = "sk-test-serve-jobs-0123"


def wait_for(check, timeout: float = 120, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start(home: Path, port: int, *flags: str) -> tuple[subprocess.Popen, openai.OpenAI]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmforge",
            "--log-format",
            "plain",
            "serve-jobs",
            "--port",
            str(port),
            "--home",
            str(home),
            "--api-key",
            KEY,
            "--device",
            "cpu",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def up() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, 60, "the server")
    url = f"http://127.0.0.1:{port}/v1"
    return process, openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "slmforge", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def steps(client: openai.OpenAI, job_id: str) -> list[int]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [e.data["step"] for e in events if e.type == "metrics"]


def test_sigkill_then_resume_or_fail(tmp_path, tiny_llama) -> None:
    home, port = tmp_path / "jobs", free_port("127.0.0.1")
    server, client = start(home, port)
    try:
        data = write_sample(tmp_path / "train.jsonl")
        # the jobs CLI as a user types it: upload + create + follow the events to the end
        env = os.environ | {"SLMFORGE_API_KEY": KEY, "SLMFORGE_HOME": str(tmp_path / "home")}
        created = cli(
            "jobs",
            "create",
            "--model",
            str(tiny_llama),
            "--training-file",
            str(data),
            "--batch-size",
            "2",
            "-H",
            "max_steps=1",
            "-H",
            "max_seq_len=64",
            "--suffix",
            "cli",
            "--wait",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            env=env,
        )
        assert created.returncode == 0, created.stderr
        assert "Step 1/1: training loss=" in created.stdout
        done_id = re.search(r"created (ftjob-\w+)", created.stdout).group(1)
        done = client.fine_tuning.jobs.retrieve(done_id)
        assert f"{done_id}: succeeded {done.fine_tuned_model}" in created.stdout
        uploaded = client.files.retrieve(done.training_file)
        long = {"batch_size": 2, "max_steps": 5000, "max_seq_len": 64, "save_every": 2}
        job = client.fine_tuning.jobs.create(
            model=str(tiny_llama), training_file=uploaded.id, hyperparameters=long
        )
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, 180, "checkpoint")
        before = client.fine_tuning.jobs.retrieve(done.id)
        pid = JobStore(home).get_job(job.id).pid
        kill(server)
        # the worker dies with the server: no training goes on without it
        wait_for(lambda: process_start(pid) is None, 10, "the worker to die with the server")

        server, client = start(home, port, "--resume-interrupted")
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any("queued again" in e.message for e in events)
        resumed = wait_for(
            lambda: [
                e
                for e in client.fine_tuning.jobs.list_events(job.id).data
                if e.message.startswith("Resuming from checkpoint step-")
            ],
            60,
            "the resume event",
        )
        checkpoint_step = int(resumed[0].message.rsplit("-", 1)[1])
        wait_for(lambda: max(steps(client, job.id)) > checkpoint_step, 60, "a resumed step")
        reported = steps(client, job.id)
        # steps up to the checkpoint are not reported again after the resume
        early = [s for s in reported if s <= checkpoint_step]
        assert sorted(early) == list(range(1, checkpoint_step + 1))
        kill(server)

        server, client = start(home, port)
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed" and failed.error.code == "server_interrupted"
        assert "--resume-interrupted" in failed.error.message
        assert client.fine_tuning.jobs.retrieve(done.id) == before
        assert client.files.content(uploaded.id).content == data.read_bytes()
        assert client.files.content(before.result_files[0]).text.startswith("step,train_loss")
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert os.path.exists(home / "jobs.db")
