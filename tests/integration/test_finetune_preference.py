"""Preference tuning (DPO, ORPO, SimPO) on the pretrained tiny Llama: held-out reward accuracy,
the reference model of adapter and full runs, resume, data parallelism and bad input.

The pairs come from the travel sample: each prompt's own answer preferred, another row's answer
not. The non-preferred answers are drawn from 10 rows whose answers are never preferred (like
a weak model's few canned answers); the held-out pairs have prompts and preferred answers the
run never saw. (With non-preferred answers drawn from every row, the only signal is matching an
answer to its question, which the 2-layer model learns too slowly for a test: DPO reached ~0.7
held-out reward accuracy in 150 steps.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from data_helpers import write_jsonl
from slmforge.artifacts import read_manifest
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.sample import sample_pairs, write_sample
from slmforge.errors import Interrupted
from slmforge.train import loop, preference
from slmforge.train.sft import finetune

pytestmark = pytest.mark.integration

PAIR_METRICS = {"loss", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp"}


def _pair_rows(prompts: list[dict], pool: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "input": {"messages": [{"role": "user", "content": p["prompt"]}]},
            "preferred_output": [{"role": "assistant", "content": p["response"]}],
            "non_preferred_output": [
                {"role": "assistant", "content": rng.choice(pool)["response"]}
            ],
        }
        for p in prompts
    ]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """120 training pairs and 40 held-out pairs (OpenAI DPO rows), plus the SFT sample."""
    root = tmp_path_factory.mktemp("pairs")
    items = sample_pairs()
    random.Random(3).shuffle(items)
    pool = items[160:170]  # answers that are never preferred
    return {
        "train": write_jsonl(root / "train.jsonl", _pair_rows(items[:120], pool, 1)),
        "validation": write_jsonl(root / "eval.jsonl", _pair_rows(items[120:160], pool, 2)),
        "sft": write_sample(root / "travel.jsonl"),
    }


def _config(model: Path, pairs: dict[str, Path], out: Path, **overrides) -> FinetuneConfig:
    options = dict(
        model=str(model),
        data=pairs["train"],
        eval_data=pairs["validation"],
        out=out,
        objective="dpo",
        max_steps=16,
        lr=3e-3,
        batch_size=8,
        log_every=4,
        eval_every=8,
        samples=0,
        target_modules=["all-linear"],
        seed=11,
    )
    return FinetuneConfig(**(options | overrides))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_the_preference_on_held_out_pairs(tiny_llama, pairs, tmp_path):
    out = finetune(_config(tiny_llama, pairs, tmp_path / "dpo", samples=1))
    manifest = read_manifest(out)
    m = manifest.metrics
    # the adapter starts switched off: policy == reference, every reward ties (a coin toss)
    assert m["eval_reward_accuracy_initial"] == 0.5 and m["eval_reward_margin_initial"] == 0.0
    assert m["eval_reward_accuracy_final"] >= 0.9, m
    assert m["eval_reward_margin_final"] > 0 and m["eval_loss_final"] < m["eval_loss_initial"]
    assert m["train_loss_last"] < m["train_loss_first"]
    details = manifest.details
    assert details["objective"] == "dpo" and details["beta"] == 0.1
    assert details["reference"] == "adapter_disabled"
    assert manifest.kind == "adapter" and (out / "adapter_model.safetensors").exists()
    assert len(details["samples"]) == 1 and details["samples"][0]["reference"]
    records = _records(out)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 4, 8, 12, 16]
    assert PAIR_METRICS | {"tokens_per_s", "lr", "grad_norm"} <= set(train[0])
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 8, 16]
    assert {f"eval_{k}" for k in PAIR_METRICS} <= set(evals[0])
    assert (out / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "dpo.partial").exists()


def test_orpo_learns_the_preference_on_held_out_pairs(tiny_llama, pairs, tmp_path):
    cfg = _config(
        tiny_llama,
        pairs,
        tmp_path / "orpo",
        objective="orpo",
        orpo_lambda=1.0,
        lr=5e-3,
        max_steps=32,
    )
    manifest = read_manifest(finetune(cfg))
    m = manifest.metrics
    assert abs(m["eval_reward_accuracy_initial"] - 0.5) <= 0.15, m
    assert m["eval_reward_accuracy_final"] >= 0.9, m
    assert manifest.details["orpo_lambda"] == 1.0 and "reference" not in manifest.details


def test_simpo_raises_reward_accuracy(tiny_llama, pairs, tmp_path):
    cfg = _config(tiny_llama, pairs, tmp_path / "simpo", objective="simpo", max_steps=8)
    manifest = read_manifest(finetune(cfg))
    m = manifest.metrics
    assert m["eval_reward_accuracy_final"] > m["eval_reward_accuracy_initial"], m
    assert manifest.details["beta"] == 2.0 and manifest.details["simpo_gamma"] == 0.5


def _interrupt_after(monkeypatch, steps: int) -> None:
    """Ctrl-C as the loop sees it, after `steps` optimizer steps."""
    real = loop.train_step
    done = []

    def stepping(plan, micro_batches, window):
        grad_norm = real(plan, micro_batches, window)
        done.append(1)
        plan.interrupted = len(done) == steps
        return grad_norm

    monkeypatch.setattr(loop, "train_step", stepping)


def _same_tensors(a: Path, b: Path, tolerance: float = 1e-6) -> None:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    assert max((left[k] - right[k]).abs().max().item() for k in left) < tolerance


def test_an_interrupted_dpo_run_resumes_to_the_same_adapter(
    tiny_llama, pairs, tmp_path, monkeypatch
):
    common = dict(max_steps=6, eval_data=None, eval_every=None)
    straight = finetune(_config(tiny_llama, pairs, tmp_path / "straight", **common))
    out = tmp_path / "resumed"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupted, match="--resume"):
        finetune(_config(tiny_llama, pairs, out, **common))
    monkeypatch.undo()
    assert not out.exists()
    finetune(_config(tiny_llama, pairs, out, resume=True, **common))
    _same_tensors(straight / "adapter_model.safetensors", out / "adapter_model.safetensors")


def test_full_dpo_precomputes_the_reference_once(tiny_llama, pairs, tmp_path, monkeypatch):
    """`full` changes the base, so the reference log-probabilities are computed before the
    first step and kept in the work folder; a resumed run reuses them."""
    common = dict(method="full", target_modules=[], lr=5e-4, max_steps=6, eval_every=3)
    straight = finetune(_config(tiny_llama, pairs, tmp_path / "straight", **common))
    manifest = read_manifest(straight)
    assert manifest.kind == "model" and manifest.details["reference"] == "precomputed"
    assert manifest.metrics["eval_reward_accuracy_final"] > 0.5

    out = tmp_path / "resumed"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        finetune(_config(tiny_llama, pairs, out, **common))
    monkeypatch.undo()
    assert (tmp_path / "resumed.partial" / preference.REFERENCE_FILE).exists()

    def must_not_compute(plan, rows):
        raise AssertionError("the reference was computed again")

    monkeypatch.setattr(preference, "_compute_reference", must_not_compute)
    finetune(_config(tiny_llama, pairs, out, resume=True, **common))
    _same_tensors(straight / "model.safetensors", out / "model.safetensors")


def _refused(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> str:
    from slmforge.cli.main import main
    from slmforge.models import load

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(load, "load_causal_lm", must_not_load)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--max-steps", "2", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("out*"))  # nothing left behind
    return err


def test_an_sft_file_given_to_dpo_is_refused_with_its_line(
    tiny_llama, pairs, tmp_path, monkeypatch, capsys
):
    argv = ["finetune", "--model", str(tiny_llama), "--objective", "dpo"]
    err = _refused([*argv, "--data", str(pairs["sft"])], tmp_path, monkeypatch, capsys)
    assert f"{pairs['sft']}:1: this is a supervised row (prompt_response)" in err
    assert "needs preference pair rows" in err


def test_a_pair_file_given_to_sft_is_refused_with_its_line(
    tiny_llama, pairs, tmp_path, monkeypatch, capsys
):
    argv = ["finetune", "--model", str(tiny_llama), "--data", str(pairs["train"])]
    err = _refused(argv, tmp_path, monkeypatch, capsys)
    assert f"{pairs['train']}:1: this is a preference row" in err
    assert "--objective dpo, orpo or simpo" in err


def test_train_on_prompt_is_refused_for_pairs(tiny_llama, pairs, tmp_path, monkeypatch, capsys):
    argv = ["finetune", "--model", str(tiny_llama), "--data", str(pairs["train"])]
    err = _refused(
        [*argv, "--objective", "orpo", "--train-on-prompt"], tmp_path, monkeypatch, capsys
    )
    assert "--train-on-prompt does not apply to --objective orpo" in err


def test_two_processes_match_one(tiny_llama, pairs, tmp_path):
    """gloo data parallelism: the mean over a step's pairs is the same update on any --nproc."""
    import subprocess
    import sys

    common = [
        "finetune",
        "--model",
        str(tiny_llama),
        "--data",
        str(pairs["train"]),
        "--objective",
        "dpo",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--lr",
        "3e-3",
        "--lora-dropout",
        "0",
        "--samples",
        "0",
    ]
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        argv = [*common, *extra, "--out", str(tmp_path / name)]
        done = subprocess.run(
            [sys.executable, "-m", "slmforge", "--log-format", "plain", *argv],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    _same_tensors(
        tmp_path / "one" / "adapter_model.safetensors",
        tmp_path / "two" / "adapter_model.safetensors",
        tolerance=1e-4,
    )
