"""The jobs store on a real SQLite file: atomic claims, transactions that survive a crash,
content-addressed blobs, pagination, and the request -> FinetuneConfig mapping."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from pathlib import Path

import pytest

from slmforge.http.errors import APIError
from slmforge.jobs.spec import JobRequest, build_config, model_name, resolve_model
from slmforge.jobs.store import JobStore
from slmforge.jobs.worker import metrics_csv


def _job(store: JobStore, job_id: str) -> None:
    store.create_job(
        {
            "id": job_id,
            "model": "m",
            "fine_tuned_model_name": f"ft:m::{job_id}",
            "training_file": "file-1",
            "hyperparameters": {},
            "seed": 1,
            "config": {},
        }
    )


def test_claims_are_atomic_and_in_order(tmp_path) -> None:
    store = JobStore(tmp_path)
    for index in range(20):
        _job(store, f"ftjob-{index:02d}")
    claimed: list[str] = []

    def claim() -> None:
        while (job := JobStore(tmp_path).claim_next()) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [f"ftjob-{i:02d}" for i in range(20)]  # each exactly once
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_interrupted_jobs_fail_or_resume(tmp_path) -> None:
    store = JobStore(tmp_path)
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c"):
        _job(store, job_id)
    store.claim_next()
    store.claim_next()
    assert store.succeed("ftjob-a", "ft:m::a", [], 10)
    # a new process opens the same file, as a restarted server would
    assert JobStore(tmp_path).recover_interrupted(resume=False) == ["ftjob-b"]
    failed = store.get_job("ftjob-b")
    assert failed.status == "failed" and failed.error["code"] == "server_interrupted"
    assert store.get_job("ftjob-a").status == "succeeded"
    assert store.get_job("ftjob-c").status == "queued"
    store.claim_next()
    assert store.recover_interrupted(resume=True) == ["ftjob-c"]
    assert store.get_job("ftjob-c").status == "queued" and store.get_job("ftjob-c").resume


def test_cancelled_jobs_keep_their_status(tmp_path) -> None:
    store = JobStore(tmp_path)
    _job(store, "ftjob-a")
    store.claim_next()
    assert store.cancel("ftjob-a")
    assert not store.cancel("ftjob-a")
    # a worker finishing after the cancel cannot overwrite it
    assert not store.succeed("ftjob-a", "ft:m::a", [], 1)
    assert not store.fail("ftjob-a", "x", "y")
    assert store.get_job("ftjob-a").status == "cancelled"


def test_failed_transaction_leaves_nothing(tmp_path) -> None:
    store = JobStore(tmp_path)
    _job(store, "ftjob-a")
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("UPDATE jobs SET status = 'running'")
        raise RuntimeError("crash in the middle")
    assert store.get_job("ftjob-a").status == "queued"


def test_blobs_are_content_addressed(tmp_path) -> None:
    store = JobStore(tmp_path)
    first = store.add_file(b"same", "../../etc/passwd", "fine-tune", ".jsonl")
    second = store.add_file(b"same", "other.jsonl", "fine-tune", ".jsonl")
    assert [p.name for p in store.blobs.iterdir()] == [f"{first['sha256']}.jsonl"]
    store.delete_file(first["id"])
    assert store.file_path(second).read_bytes() == b"same"  # still held by the other record
    store.delete_file(second["id"])
    assert list(store.blobs.iterdir()) == []


def test_pagination(tmp_path) -> None:
    store = JobStore(tmp_path)
    for index in range(5):
        _job(store, f"ftjob-{index}")
    page, more = store.list_jobs(None, 2)
    assert [j.id for j in page] == ["ftjob-4", "ftjob-3"] and more
    page, more = store.list_jobs("ftjob-3", 10)
    assert [j.id for j in page] == ["ftjob-2", "ftjob-1", "ftjob-0"] and not more


def test_request_maps_to_finetune_config(tmp_path, tiny_llama: Path) -> None:
    store = JobStore(tmp_path)
    files = {"training_file": store.add_file(b"{}", "t.jsonl", "fine-tune", ".jsonl", examples=40)}
    model, base = resolve_model(str(tiny_llama), None)
    assert base == tiny_llama.name
    request = JobRequest(
        model=model,
        training_file="file-x",
        method={"type": "dora", "dora": {"hyperparameters": {"n_epochs": 2, "lora_r": 4}}},
        hyperparameters=None,
    )
    cfg, public, total = build_config(request, "ftjob-1", model, files, store, tmp_path, "cpu")
    assert (cfg.method, cfg.epochs, cfg.lora_r, cfg.batch_size) == ("dora", 2, 4, 4)
    assert public == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}
    assert total == 20 and cfg.save_every == 10  # a checkpoint per epoch
    assert model_name("Qwen2.5-0.5B", "x", "ftjob-abcdef1234") == "ft:Qwen2-5-0-5B:x:abcdef12"
    with pytest.raises(APIError) as raised:
        resolve_model("../outside", tmp_path)
    assert raised.value.param == "model"
    bad = JobRequest(model=model, training_file="f", hyperparameters={"batch_size": 64})
    with pytest.raises(APIError) as raised:
        build_config(bad, "ftjob-2", model, files, store, tmp_path, "cpu")
    assert raised.value.param == "hyperparameters.batch_size"
    assert "40 examples" in raised.value.message


def test_packed_jobs_count_steps_as_the_trainer_does(tmp_path, tiny_llama: Path) -> None:
    from slmforge.data.sample import write_sample
    from slmforge.train.distributed import DistContext
    from slmforge.train.sft import setup

    store = JobStore(tmp_path / "jobs")
    content = write_sample(tmp_path / "train.jsonl").read_bytes()
    examples = len(content.splitlines())
    files = {
        "training_file": store.add_file(
            content, "train.jsonl", "fine-tune", ".jsonl", examples=examples
        )
    }
    hyper = {"n_epochs": 2, "batch_size": 2, "packing": True, "max_seq_len": 256}
    request = JobRequest(model=str(tiny_llama), training_file="file-x", hyperparameters=hyper)
    out = tmp_path / "out"
    cfg, _, total = build_config(request, "ftjob-p", str(tiny_llama), files, store, out, "cpu")
    # the trainer's own plan of this job: "step n/total" and per-epoch checkpoints must match it
    plan = setup(cfg, DistContext())
    assert (total, cfg.save_every) == (plan.total_steps, plan.steps_per_epoch)
    assert total < 2 * (examples // 2)  # packed rows hold several examples each
    two = b"\n".join(content.splitlines()[:2]) + b"\n"
    few = {"training_file": store.add_file(two, "t.jsonl", "fine-tune", ".jsonl", examples=2)}
    with pytest.raises(APIError) as raised:  # two examples pack into one row: less than a batch
        build_config(request, "ftjob-q", str(tiny_llama), few, store, tmp_path / "o2", "cpu")
    assert raised.value.param == "hyperparameters.batch_size"
    assert "pack into 1 row of" in raised.value.message


def test_results_file_has_openai_metric_names() -> None:
    records = [
        {"step": 0, "eval_loss": 3.0, "eval_token_accuracy": 0.1},
        {"step": 1, "loss": 2.0, "token_accuracy": 0.5, "lr": 1e-4},
        {"step": 1, "eval_loss": 1.5, "eval_token_accuracy": 0.6},
    ]
    rows = list(csv.DictReader(io.StringIO(metrics_csv(records).decode())))
    assert rows == [  # step 0 (the eval before training) is not a training step
        {
            "step": "1",
            "train_loss": "2.0",
            "train_accuracy": "0.5",
            "valid_loss": "1.5",
            "valid_mean_token_accuracy": "0.6",
            "train_mean_token_accuracy": "0.5",
            "full_valid_loss": "1.5",
            "full_valid_mean_token_accuracy": "0.6",
        }
    ]
