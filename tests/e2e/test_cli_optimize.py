"""`slmforge optimize` as a user types it: the summary, the threshold, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main

pytestmark = pytest.mark.integration


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _optimize(model: Path, out: Path, *extra: str) -> list[str]:
    argv = ["optimize", "--model", str(model), "--out", str(out)]
    return [*argv, "--verify-prompts", "2", "--verify-tokens", "8", *extra]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def peft_adapter(tiny_model, tmp_path_factory) -> Path:
    """A random (untrained) LoRA adapter of the tiny llama, written by PEFT without slmforge."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmforge.models.load import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(tiny_model("llama"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("peft") / "random"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def test_int4_with_adapter_then_threshold_failure(tiny_model, peft_adapter, tmp_path, capsys):
    model = tiny_model("llama")
    argv = _optimize(model, tmp_path / "int4", "--adapter", f"rnd={peft_adapter}")
    code, out, err = _run([*argv, "--min-agreement", "0"], capsys)
    assert code == 0, err
    assert "parity with PyTorch" in out and "rnd" in out and "ratio" in out
    manifest = read_manifest(tmp_path / "int4")
    assert (tmp_path / "int4" / "rnd.onnx_adapter").is_file()
    assert manifest.details["adapters"]["rnd"]["target_modules"] == ["q_proj"]
    assert manifest.source["adapter:rnd"].sha256
    kl = max(p["kl"] for p in manifest.metrics["parity"].values())
    # int4 moves the tiny model's next-token distribution a little (deterministic): ask for less.
    assert kl > 0
    failing = _optimize(model, tmp_path / "strict", "--adapter", f"rnd={peft_adapter}")
    code, _, err = _run([*failing, "--max-kl", f"{kl / 2:.3g}"], capsys)
    assert code == 1
    assert "verification failed" in _error_line(err) and "--max-kl" in err
    assert {p.name for p in tmp_path.iterdir()} == {"int4"}


def test_not_a_model_folder(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    code, _, err = _run(_optimize(tmp_path / "notes", tmp_path / "out"), capsys)
    assert code == 2
    assert (
        _error_line(err)
        == f"error: {tmp_path / 'notes'} is not a model folder: missing config.json"
    )
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "gpt2").mkdir()
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1}
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    code, _, err = _run(_optimize(tmp_path / "gpt2", tmp_path / "out"), capsys)
    assert code == 2
    assert _error_line(err) == (
        "error: unsupported architecture gpt2; supported: llama, qwen2, phi3, mistral"
    )
    assert not (tmp_path / "out").exists()


def test_adapter_trained_on_a_different_base(tiny_model, peft_adapter, tmp_path, capsys):
    argv = _optimize(tiny_model("qwen2"), tmp_path / "out", "--adapter", str(peft_adapter))
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "adapter random was trained on a different base" in _error_line(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("device", "message"),
    [("dml", "--device dml needs Windows"), ("cuda", "has no CUDA support")],
)
def test_device_this_machine_cannot_run(tiny_model, tmp_path, capsys, device, message):
    argv = _optimize(tiny_model("llama"), tmp_path / "out", "--device", device)
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in _error_line(err)
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_force(tiny_model, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, _, err = _run(_optimize(tiny_model("llama"), tmp_path / "out"), capsys)
    assert code == 2
    assert (
        _error_line(err) == f"error: {tmp_path / 'out'} already exists; pass --force to replace it"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_bad_option_values(tiny_model, tmp_path, capsys):
    code, _, err = _run(
        _optimize(tiny_model("llama"), tmp_path / "out", "--precision", "int3"), capsys
    )
    assert code == 2 and "int3" in err
    code, _, err = _run(_optimize(tiny_model("llama"), tmp_path / "out", "--merge-adapter"), capsys)
    assert code == 2 and "--merge-adapter needs exactly one --adapter" in _error_line(err)
    assert not list(tmp_path.iterdir())
