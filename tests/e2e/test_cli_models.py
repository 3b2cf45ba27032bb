"""`slmforge models tiny|info` and `slmforge chat`, run as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest

pytestmark = pytest.mark.integration


def slmforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slmforge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_models_tiny_then_info(tmp_path: Path) -> None:
    out = tmp_path / "tiny-phi3"
    result = slmforge(
        "--log-format",
        "json",
        "models",
        "tiny",
        "--arch",
        "phi3",
        "--out",
        str(out),
        "--pretrain-steps",
        "4",
        "--seed",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "task_end" and e["task"] == "Pretraining" for e in events)
    manifest = read_manifest(out)
    assert manifest.config["arch"] == "phi3" and manifest.config["pretrain_steps"] == 4
    assert manifest.stop == ["<|end|>", "<|endoftext|>"]

    info = slmforge("models", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    details = json.loads(info.stdout)
    assert details["architecture"] == "Phi3ForCausalLM"
    assert details["parameters"] == manifest.metrics["parameters"]
    assert details["chat_format"] == "phi3"

    table = slmforge("models", "info", str(out))
    assert table.returncode == 0
    assert "Phi3ForCausalLM" in table.stdout and "<|end|> <|endoftext|>" in table.stdout

    again = slmforge("models", "tiny", "--arch", "phi3", "--out", str(out))
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {out} already exists; pass --force to replace it"


def test_models_tiny_bad_options(tmp_path: Path) -> None:
    result = slmforge("models", "tiny", "--arch", "gpt2", "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "'--arch'" in result.stderr and "'gpt2'" in result.stderr
    assert not (tmp_path / "m").exists()
    missing = slmforge("models", "info", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: {tmp_path} is not a model folder: missing config.json"


def test_chat_with_piped_stdin(tiny_llama: Path) -> None:
    result = slmforge(
        "chat",
        str(tiny_llama),
        "--max-tokens",
        "8",
        "--system",
        "Be brief.",
        "--timings",
        stdin="What's a must-see in Lisbon?\nAnd in Porto?\n/exit\nnever read\n",
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) >= 2 and answers[0].strip()
    stats = [line for line in result.stderr.splitlines() if "tokens" in line]
    assert len(stats) == 2 and "ttft" in stats[0]


def test_chat_rejects_bad_adapter_option(tiny_llama: Path) -> None:
    result = slmforge("chat", str(tiny_llama), "--adapter", "no-equals-sign", stdin="")
    assert result.returncode == 2
    assert "expected NAME=PATH" in result.stderr
    hot = slmforge("chat", str(tiny_llama), "--temperature", "5", stdin="")
    assert hot.returncode == 2
    assert hot.stderr.startswith("error: --temperature: Input should be less than or equal to 2")


def test_models_init_like_a_real_model(tmp_path: Path) -> None:
    out = tmp_path / "qwen"
    result = slmforge(
        "models", "init", "--like", "qwen2.5-0.5b", "--layers", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]) == (
        896,
        151936,
        1,
    )
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    manifest = read_manifest(out)
    assert manifest.config["like"] == "qwen2.5-0.5b" and manifest.config["weights"] == "random"
    assert manifest.metrics["parameters"] == 151936 * 896 + 14_912_384 + 896  # + final norm
    assert "<|im_start|>" in manifest.chat_template and "<|im_end|>" in manifest.stop
    info = json.loads(slmforge("models", "info", str(out), "--json").stdout)
    assert info["parameters"] == manifest.metrics["parameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--like", "gpt-5"], "unknown model 'gpt-5'"),
        (["--like", "llama-3.2-1b", "--layers", "17"], "llama-3.2-1b has 16 layers"),
    ],
)
def test_models_init_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = slmforge("models", "init", *args, "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "m").exists()
