"""Fine-tuning on the pretrained tiny models: loss, metrics, adapters, merge, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slmforge.artifacts import read_manifest
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.sample import write_sample
from slmforge.train.sft import finetune

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful travel assistant."


@pytest.fixture(scope="module")
def travel_split(tmp_path_factory) -> dict[str, Path]:
    """slmforge's sample data as chat messages, split into train/validation."""
    from slmforge.config.data import SplitConfig
    from slmforge.data.split import run_split

    root = tmp_path_factory.mktemp("travel")
    raw = write_sample(root / "travel.jsonl")
    parts = run_split(
        SplitConfig(input=raw, out_dir=root / "split", validation=20, seed=3, system_prompt=SYSTEM)
    )
    return {"raw": raw, **{name: Path(path) for name, path in parts.items()}}


def _config(model: Path, data: dict[str, Path], out: Path, **overrides) -> FinetuneConfig:
    options = dict(
        model=str(model),
        data=data["train"],
        eval_data=data["validation"],
        out=out,
        max_steps=100,
        lr=5e-3,
        batch_size=8,
        log_every=10,
        samples=1,
        target_modules=["all-linear"],
        seed=11,
    )
    return FinetuneConfig(**(options | overrides))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "mistral"])
def test_lora_learns_the_travel_data(tiny_model, travel_split, tmp_path, arch):
    base = tiny_model(arch)
    out = finetune(_config(base, travel_split, tmp_path / "adapter"))
    manifest = read_manifest(out)
    m = manifest.metrics
    assert m["train_loss_last"] <= 0.8 * m["train_loss_first"], m
    assert m["eval_loss_final"] < m["eval_loss_initial"], m
    assert m["eval_token_accuracy_final"] > m["eval_token_accuracy_initial"], m
    assert manifest.kind == "adapter" and manifest.stop and manifest.chat_template
    assert manifest.source["base_model"].sha256 and manifest.source["data"].sha256
    assert len(manifest.details["samples"]) == 1
    assert (out / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, *range(10, 101, 10)]
    assert not (tmp_path / "adapter.partial").exists()
    _adapter_loads_with_plain_peft_and_merges_exactly(base, out, tmp_path / "merged")


def _adapter_loads_with_plain_peft_and_merges_exactly(base: Path, adapter: Path, merged: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmforge.train.merge import merge_adapter

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    merge_adapter(adapter, merged)
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.tensor([[5, 17, 99, 240, 31, 8, 77]])
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            without = model(input_ids=ids).logits
        merged_logits = plain(input_ids=ids).logits
    assert (with_adapter - merged_logits).abs().max() < 1e-4
    assert (with_adapter - without).abs().max() > 1e-2  # the adapter changes the model
    assert read_manifest(merged).kind == "model"


def test_workshop_olive_command_translates_one_to_one(tiny_model, travel_split, tmp_path):
    """olive finetune --method lora --data_files data.jsonl --text_template ... --max_steps 100"""
    from slmforge.cli.main import main

    out = tmp_path / "olive-style"
    argv = [
        "-q",
        "finetune",
        "--model",
        str(tiny_model("phi3")),
        "--method",
        "lora",
        "--data",
        str(travel_split["raw"]),
        "--max-steps",
        "100",
        "--batch-size",
        "8",
        "--text-template",
        r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    manifest = read_manifest(out)
    assert (out / "adapter_model.safetensors").exists()
    assert manifest.details["text_template"].startswith("<|user|>")
    assert manifest.metrics["train_loss_last"] < manifest.metrics["train_loss_first"]


def test_dora_and_full_methods(tiny_model, travel_split, tmp_path):
    base = tiny_model("qwen2")
    dora = finetune(_config(base, travel_split, tmp_path / "dora", method="dora", max_steps=20))
    config = json.loads((dora / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    full = finetune(
        _config(
            base,
            travel_split,
            tmp_path / "full",
            method="full",
            max_steps=20,
            lr=1e-3,
            target_modules=[],
        )
    )
    manifest = read_manifest(full)
    assert manifest.kind == "model" and (full / "model.safetensors").exists()
    assert manifest.metrics["eval_loss_final"] < manifest.metrics["eval_loss_initial"]


def test_merge_option_writes_a_merged_model(tiny_model, travel_split, tmp_path):
    out = finetune(
        _config(tiny_model("llama"), travel_split, tmp_path / "a", max_steps=10, merge=True)
    )
    assert read_manifest(out / "merged").kind == "model"
    assert (out / "merged" / "model.safetensors").exists()


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "slmforge", "--log-format", "plain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def _cli_args(model: Path, data: dict[str, Path], out: Path) -> list[str]:
    return [
        "finetune",
        "--model",
        str(model),
        "--data",
        str(data["train"]),
        "--eval-data",
        str(data["validation"]),
        "--max-steps",
        "100",
        "--lr",
        "3e-3",
        "--batch-size",
        "4",
        "--log-every",
        "10",
        "--samples",
        "0",
        "--lora-dropout",
        "0.1",
        "--out",
        str(out),
    ]


def _last_logged_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line]
    return max(steps, default=0)


def test_interrupt_and_resume_match_an_uninterrupted_run(tiny_model, travel_split, tmp_path):
    base = tiny_model("llama")
    straight = _run_cli(_cli_args(base, travel_split, tmp_path / "straight"))
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    out = tmp_path / "resumed"
    proc = _run_cli(_cli_args(base, travel_split, out))
    metrics = tmp_path / "resumed.partial" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while _last_logged_step(metrics) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "--resume" in output and not out.exists()
    assert list((tmp_path / "resumed.partial" / "checkpoints").glob("step-*"))

    resumed = _run_cli([*_cli_args(base, travel_split, out), "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    a = read_manifest(tmp_path / "straight").metrics
    b = read_manifest(out).metrics
    assert abs(a["train_loss_last"] - b["train_loss_last"]) < 1e-3
    assert abs(a["eval_loss_final"] - b["eval_loss_final"]) < 1e-3


def test_two_processes_match_one(tiny_model, travel_split, tmp_path):
    """gloo data parallelism on CPU: same updates as one process; rank 0 alone writes."""
    from safetensors.torch import load_file

    base = tiny_model("qwen2")
    common = [
        "--max-steps",
        "6",
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
        "--log-every",
        "2",
    ]
    one = _run_cli(
        [
            "finetune",
            "--model",
            str(base),
            "--data",
            str(travel_split["train"]),
            *common,
            "--out",
            str(tmp_path / "one"),
        ]
    )
    assert one.wait(timeout=600) == 0, one.stdout.read()
    two = _run_cli(
        [
            "finetune",
            "--model",
            str(base),
            "--data",
            str(travel_split["train"]),
            *common,
            "--nproc",
            "2",
            "--out",
            str(tmp_path / "two"),
        ]
    )
    output = two.communicate(timeout=600)[0]
    assert two.returncode == 0, output
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert output.count("wrote ") == 1  # only rank 0 writes the artifact


def _tool_rows(path: Path, cities: list[str]) -> Path:
    """OpenAI fine-tuning rows that call a function, read its reply and answer from it."""
    tool = {
        "type": "function",
        "function": {
            "name": "city_guide",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    rows = []
    for i, city in enumerate(cities):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "city_guide", "arguments": json.dumps({"city": city})},
        }
        rows.append({"tools": [tool], "messages": [
            {"role": "user", "content": f"What should I see in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": f"{city}: the old town"},
            {"role": "assistant", "content": f"In {city}, see the old town."},
        ]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_lora_learns_tool_calls_through_a_template_without_tool_support(tiny_model, tmp_path):
    """The tiny qwen2's ChatML template has no tool syntax: the Hermes fallback renders the
    calls, and fine-tuning learns them (loss on the calls and answers, not the tool replies)."""
    cities = ["Lisbon", "Porto", "Kyoto", "Oslo", "Rome", "Paris", "Vienna", "Prague"] * 5
    data = {
        "train": _tool_rows(tmp_path / "train.jsonl", cities),
        "validation": _tool_rows(tmp_path / "val.jsonl", ["Madrid", "Berlin", "Dublin"]),
    }
    out = finetune(_config(tiny_model("qwen2"), data, tmp_path / "adapter", max_steps=40,
                           samples=0))  # fmt: skip
    m = read_manifest(out).metrics
    assert m["train_loss_last"] <= 0.5 * m["train_loss_first"], m
    assert m["eval_token_accuracy_final"] > m["eval_token_accuracy_initial"] + 0.2, m
