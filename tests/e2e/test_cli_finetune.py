"""`slmforge finetune` bad input: one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmforge.cli.main import main
from slmforge.data.sample import write_sample

pytestmark = pytest.mark.integration


def _run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture()
def data(tmp_path) -> Path:
    return write_sample(tmp_path / "travel.jsonl")


def _finetune(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--samples",
        "0",
        *extra,
    ]


def _assert_nothing_written(tmp_path: Path, keep: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == keep


def test_missing_data_file(tiny_llama, tmp_path, capsys):
    code, err = _run(_finetune(tiny_llama, tmp_path / "nope.jsonl", tmp_path / "out"), capsys)
    assert code == 2
    assert err.strip() == f"error: --data: {tmp_path / 'nope.jsonl'} not found"
    _assert_nothing_written(tmp_path, set())


def test_data_with_errors_names_the_lines(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "Hi", "response": "Hello"}\n{"prompt": "", "response": "x"}\nnot json\n'
    )
    code, err = _run(_finetune(tiny_llama, bad, tmp_path / "out"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and f"{bad}:2 [prompt]" in err and "more error" in err
    _assert_nothing_written(tmp_path, {"bad.jsonl"})


def test_unknown_target_modules(tiny_llama, data, tmp_path, capsys):
    code, err = _run(
        _finetune(tiny_llama, data, tmp_path / "out", "--target-modules", "qkv"), capsys
    )
    assert code == 2
    assert "--target-modules: qkv not in this model" in err and "q_proj" in err
    _assert_nothing_written(tmp_path, {"travel.jsonl"})


def test_qlora_on_cpu_fails_before_loading(tiny_llama, data, tmp_path, capsys):
    code, err = _run(
        _finetune(tiny_llama, data, tmp_path / "out", "--method", "qlora", "--device", "cpu"),
        capsys,
    )
    assert code == 2
    assert "--method qlora needs a CUDA GPU" in err
    _assert_nothing_written(tmp_path, {"travel.jsonl"})


def test_existing_output_needs_force(tiny_llama, data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(_finetune(tiny_llama, data, out), capsys)
    assert code == 2 and "already exists; pass --force" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_option_in_yaml_config(tiny_llama, data, tmp_path, capsys):
    config = tmp_path / "ft.yaml"
    config.write_text(f"model: {tiny_llama}\ndata: {data}\nout: {tmp_path / 'o'}\nlora_rank: 8\n")
    code, err = _run(["finetune", "--config", str(config)], capsys)
    assert code == 2
    assert err.strip() == f"error: {config}: lora_rank: unknown field, did you mean lora_r?"


def test_resume_without_checkpoint(tiny_llama, data, tmp_path, capsys):
    code, err = _run(_finetune(tiny_llama, data, tmp_path / "out", "--resume"), capsys)
    assert code == 2 and "no checkpoint" in err
