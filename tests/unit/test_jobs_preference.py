"""Preference jobs in the jobs API without a server: `method` types and their hyperparameters
-> FinetuneConfig, the job object's `method`, files of the wrong shape refused with their line,
and the DPO metrics under OpenAI-style names in events and the results file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from slmforge.http.errors import APIError
from slmforge.jobs.api import job_object, validate_upload
from slmforge.jobs.spec import JobRequest, build_config
from slmforge.jobs.store import JobStore
from slmforge.jobs.worker import Watcher, metrics_csv, openai_metrics


def dpo_rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Where should I go {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Try Lisbon, trip {i}."}],
            "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
        }
        for i in range(count)
    ]


def sft_rows(count: int) -> list[dict[str, Any]]:
    return [{"prompt": f"Where should I go {i}?", "response": "Lisbon."} for i in range(count)]


def _file(store: JobStore, rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return store.add_file(content, name, "fine-tune", ".jsonl", examples=len(rows))


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs")


def _build(store: JobStore, files: dict[str, dict[str, Any]], method: dict | None, **kw: Any):
    request = JobRequest(model="m", training_file="file-x", method=method, **kw)
    return build_config(request, "ftjob-1", "m", files, store, store.root / "out", "cpu")


def _method(kind: str, **hyper: Any) -> dict[str, Any]:
    return {"type": kind, kind: {"hyperparameters": hyper}}


def test_dpo_method_maps_to_the_dpo_objective_with_its_beta(store: JobStore) -> None:
    files = {"training_file": _file(store, dpo_rows(40), "pairs.jsonl")}
    cfg, public, total = _build(store, files, _method("dpo", beta=0.3, n_epochs=1))
    assert (cfg.objective, cfg.method, cfg.beta, cfg.epochs) == ("dpo", "lora", 0.3, 1)
    assert public == {
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
        "beta": 0.3,
        "dpo_nll_weight": 0.0,  # slmforge's own DPO option, reported as trained with
    }
    assert total == 10
    # "auto" (or no beta) is the objective's default, reported as the value trained with
    cfg, public, _ = _build(store, files, _method("dpo", beta="auto"))
    assert cfg.beta is None and public["beta"] == 0.1
    # the fine-tuning method is an extension hyperparameter beside the objective's type
    cfg, _, _ = _build(store, files, _method("dpo", finetune_method="dora"))
    assert (cfg.objective, cfg.method) == ("dpo", "dora")


def test_slmforge_objectives_take_their_own_options(store: JobStore) -> None:
    files = {"training_file": _file(store, dpo_rows(40), "pairs.jsonl")}
    cfg, public, _ = _build(store, files, _method("orpo", orpo_lambda=0.5))
    assert (cfg.objective, cfg.orpo_lambda) == ("orpo", 0.5)
    assert public["orpo_lambda"] == 0.5 and "beta" not in public
    cfg, public, _ = _build(store, files, _method("simpo", simpo_gamma=1.0))
    assert (cfg.objective, cfg.effective_beta, cfg.simpo_gamma) == ("simpo", 2.0, 1.0)
    assert (public["beta"], public["simpo_gamma"]) == (2.0, 1.0)


@pytest.mark.parametrize(
    ("method", "param", "message"),
    [
        (
            _method("supervised", beta=0.1),
            "method.supervised.hyperparameters.beta",
            "does not apply to method type supervised (it applies to dpo, simpo)",
        ),
        (
            _method("dpo", orpo_lambda=0.1),
            "method.dpo.hyperparameters.orpo_lambda",
            "does not apply to method type dpo (it applies to orpo)",
        ),
        (
            _method("dora", finetune_method="full"),
            "method.dora.hyperparameters.finetune_method",
            "method type dora already names the fine-tuning method",
        ),
        (
            _method("dpo", finetune_method="lorra"),
            "method.dpo.hyperparameters.finetune_method",
            "'lora'",
        ),
        (_method("dpo", beta=-1), "method.dpo.hyperparameters.beta", "greater than 0"),
    ],
)
def test_bad_preference_hyperparameters_name_the_field(
    store: JobStore, method: dict, param: str, message: str
) -> None:
    rows = sft_rows(40) if method["type"] in ("supervised", "dora") else dpo_rows(40)
    files = {"training_file": _file(store, rows, "train.jsonl")}
    with pytest.raises(APIError) as raised:
        _build(store, files, method)
    assert raised.value.param == param
    assert message in raised.value.message


def test_files_of_the_wrong_shape_are_refused_with_their_line(store: JobStore) -> None:
    pairs = _file(store, dpo_rows(40), "pairs.jsonl")
    examples = _file(store, sft_rows(40), "examples.jsonl")
    with pytest.raises(APIError) as raised:  # supervised rows given to a DPO job
        _build(store, {"training_file": examples}, _method("dpo"))
    error = raised.value
    assert (error.status, error.param, error.code) == (
        400,
        "training_file",
        "invalid_training_file",
    )
    assert "invalid training_file for a dpo job: examples.jsonl:1: " in error.message
    with pytest.raises(APIError) as raised:  # and the reverse, top-level hyperparameters too
        _build(store, {"training_file": pairs}, None, hyperparameters={"n_epochs": 1})
    assert raised.value.param == "training_file" and "pairs.jsonl:1" in raised.value.message
    assert "for a supervised job: pairs.jsonl:1: this is a preference row" in raised.value.message
    with pytest.raises(APIError) as raised:  # the validation file is checked the same way
        _build(store, {"training_file": pairs, "validation_file": examples}, _method("dpo"))
    assert raised.value.param == "validation_file"
    assert "examples.jsonl:1" in raised.value.message


def test_uploads_of_pairs_are_validated_with_the_pair_reader(tmp_path: Path) -> None:
    good = tmp_path / "blob.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in dpo_rows(3)), encoding="utf-8")
    assert validate_upload(good, "pairs.jsonl") == ("processed", None, 3)
    rows = dpo_rows(3)
    rows[1]["non_preferred_output"] = []
    bad = tmp_path / "bad-blob.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    status, details, _ = validate_upload(bad, "pairs.jsonl")
    assert status == "error"
    assert "pairs.jsonl:2" in details and "non_preferred_output" in details
    assert str(tmp_path) not in details


def test_job_object_reports_the_method_as_openai_does(store: JobStore) -> None:
    files = {"training_file": _file(store, dpo_rows(40), "pairs.jsonl")}
    cfg, public, total = _build(store, files, _method("dpo", beta=0.2))
    job = store.create_job(
        {
            "id": "ftjob-1",
            "model": "m",
            "fine_tuned_model_name": "ft:m::1",
            "training_file": files["training_file"]["id"],
            "hyperparameters": public,
            "seed": cfg.seed,
            "config": cfg.model_dump(mode="json"),
            "total_steps": total,
        }
    )
    shown = job_object(job)
    assert shown["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 3,
                "batch_size": 4,
                "learning_rate_multiplier": 1.0,
                "beta": 0.2,
                "dpo_nll_weight": 0.0,
            }
        },
    }
    assert shown["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 4,
        "learning_rate_multiplier": 1.0,
    }


DPO_RECORDS = [
    {"step": 0, "eval_loss": 0.69, "eval_reward_accuracy": 0.5, "eval_reward_margin": 0.0,
     "eval_chosen_logp": -40.0, "eval_rejected_logp": -41.0},
    {"step": 1, "loss": 0.6, "reward_accuracy": 0.75, "reward_margin": 0.2,
     "chosen_logp": -39.0, "rejected_logp": -42.0, "lr": 1e-4},
    {"step": 1, "eval_loss": 0.5, "eval_reward_accuracy": 1.0, "eval_reward_margin": 0.4,
     "eval_chosen_logp": -38.0, "eval_rejected_logp": -43.0},
]  # fmt: skip


def test_dpo_metrics_keep_their_names_in_events_and_results() -> None:
    assert openai_metrics(DPO_RECORDS[1]) == {
        "train_loss": 0.6,
        "train_reward_accuracy": 0.75,
        "train_reward_margin": 0.2,
        "train_chosen_logp": -39.0,
        "train_rejected_logp": -42.0,
    }
    assert openai_metrics(DPO_RECORDS[2])["valid_reward_accuracy"] == 1.0
    (row,) = csv.DictReader(io.StringIO(metrics_csv(DPO_RECORDS, pairs=True).decode()))
    assert row["step"] == "1" and row["train_loss"] == "0.6" and row["valid_loss"] == "0.5"
    assert row["train_accuracy"] == ""  # no token accuracy in a DPO step
    assert (row["train_reward_accuracy"], row["valid_reward_margin"]) == ("0.75", "0.4")
    assert (row["train_chosen_logp"], row["valid_rejected_logp"]) == ("-39.0", "-43.0")
    supervised = metrics_csv(DPO_RECORDS).decode().splitlines()[0]
    assert "reward" not in supervised  # a supervised job's file keeps OpenAI's columns


def test_metric_events_say_the_reward_figures(store: JobStore, tmp_path: Path) -> None:
    job = store.create_job(
        {
            "id": "ftjob-1",
            "model": "m",
            "fine_tuned_model_name": "ft:m::1",
            "training_file": "file-1",
            "hyperparameters": {},
            "seed": 1,
            "config": {},
            "total_steps": 4,
        }
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DPO_RECORDS))
    Watcher(store, job, work).sweep()
    events, _ = store.events("ftjob-1", None, 20)
    messages = [e["message"] for e in events if e["type"] == "metrics"]
    assert messages == [
        "Step 1/4: validation loss=0.5000, reward accuracy=1.000, reward margin=0.400",
        "Step 1/4: training loss=0.6000, reward accuracy=0.750, reward margin=0.200",
        "Step 0/4: validation loss=0.6900, reward accuracy=0.500, reward margin=0.000",
    ]
    data = next(e["data"] for e in events if e["type"] == "metrics" and "train_loss" in e["data"])
    assert data["train_reward_accuracy"] == 0.75 and data["learning_rate"] == 1e-4
