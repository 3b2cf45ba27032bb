"""Each family at its real width and vocabulary (`models init --like NAME --layers 2`) through
the journey a user runs: finetune -> merge -> optimize int4 with a switchable adapter -> chat ->
serve. Tiny models cannot catch what only real shapes hit (a 151,936-row tied embedding, 32
heads of 96, 4096-wide mistral layers, the memory each stage needs); two layers keep it cheap.

Every stage but serve is the CLI in its own process, as a user runs it, so each stage's memory
is returned when it ends and a pytest-xdist worker stays small (the largest, mistral-7b-v0.3 at
two layers, is ~700M parameters: 1.4 GB bf16; its stages peak at 2.7 GB, in `optimize`). Alone on
2 cores a family takes ~1.5-2.5 minutes, most of it `optimize` (ONNX build + verification) and
`models init`; the four add ~3.5-4 minutes to the suite under `pytest -n 2`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from slmforge.artifacts import read_manifest
from slmforge.config.serve import ServeConfig
from slmforge.data.sample import write_sample
from slmforge.serve.server import start_in_thread

pytestmark = pytest.mark.integration

FAMILIES = ["qwen2.5-0.5b", "llama-3.2-1b", "phi-3-mini-4k", "mistral-7b-v0.3"]
ADAPTER = "travel"
QUESTION = "What should I pack for Lisbon?"


def slmforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "slmforge", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ | {"NO_COLOR": "1"},
    )
    assert proc.returncode == 0, f"slmforge {args[0]}: {proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("like", FAMILIES)
def test_real_shape_journey(like: str, tmp_path: Path) -> None:
    model, adapter, int4 = tmp_path / "model", tmp_path / "adapter", tmp_path / "int4"
    data = write_sample(tmp_path / "travel.jsonl")
    slmforge("models", "init", "--like", like, "--layers", "2", "--out", str(model))

    # One optimizer step on short rows: enough to write a real adapter of every target module.
    train = ["--max-steps", "1", "--batch-size", "2", "--max-seq-len", "64", "--samples", "0"]
    slmforge("finetune", "--model", str(model), "--data", str(data), "--out", str(adapter), *train)
    assert read_manifest(adapter).kind == "adapter"

    slmforge("merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged"))
    assert read_manifest(tmp_path / "merged").kind == "model"

    verify = ["--verify-prompts", "2", "--verify-tokens", "4", "--max-length", "256"]
    optimize = ["--precision", "int4", "--adapter", f"{ADAPTER}={adapter}", *verify]
    slmforge("optimize", "--model", str(model), "--out", str(int4), *optimize)
    assert (int4 / f"{ADAPTER}.onnx_adapter").is_file()

    chat = ["--adapter", ADAPTER, "--max-tokens", "8", "--timings"]
    answered = slmforge("chat", str(int4), *chat, stdin=QUESTION + "\n")
    # random weights may choose tokens that decode to nothing; the timings count them anyway
    assert "ttft" in answered.stderr, answered.stderr

    running = start_in_thread(ServeConfig(model=str(int4), port=0))
    try:
        client = openai.OpenAI(
            base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=120
        )
        assert ADAPTER in [m.id for m in client.models.list().data]
        reply = client.chat.completions.create(
            model=ADAPTER,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=4,
            temperature=0,
        )
    finally:
        running.stop()
    assert 0 < reply.usage.completion_tokens <= 4
    assert reply.choices[0].finish_reason in ("stop", "length")
