"""Calibration data for --int4-algo gptq/awq (optimize/calibration.py) and the options that
need it (config/optimize.py): every bad input gets one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from slmforge.config.optimize import OptimizeConfig
from slmforge.errors import DataError, InputError
from slmforge.optimize.calibration import calibration_windows


class _Tokenizer:
    """A chat template that renders each message, and one token per character."""

    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 128 for c in text]}


def _rows(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            row = {
                "prompt": f"Question {i} about Lisbon?",
                "response": f"Answer {i}: take the tram.",
            }
            handle.write(json.dumps(row) + "\n")
    return path


def test_windows_are_cut_from_the_rendered_conversations(tmp_path):
    data = _rows(tmp_path / "train.jsonl", 20)
    calib = calibration_windows(data, _Tokenizer(), samples=4, seq_len=32, context=2048)
    assert [len(w) for w in calib.windows] == [32] * 4
    assert calib.describe()["sha256"] and calib.describe()["tokens"] == 128
    text = "".join(chr(c) for c in calib.windows[0])  # ASCII: one token per character
    assert text.startswith("<user>Question 0")


def test_shorter_data_than_asked_is_used_with_a_warning(tmp_path, capsys):
    data = _rows(tmp_path / "small.jsonl", 2)
    calib = calibration_windows(data, _Tokenizer(), samples=50, seq_len=64, context=2048)
    assert 1 <= len(calib.windows) < 50
    assert "calibrating on what there is" in capsys.readouterr().err


def test_windows_longer_than_the_context_are_cut_to_it(tmp_path, capsys):
    data = _rows(tmp_path / "train.jsonl", 40)
    calib = calibration_windows(data, _Tokenizer(), samples=2, seq_len=4096, context=64)
    assert calib.seq_len == 64 and all(len(w) <= 64 for w in calib.windows)
    assert "exceeds the model's context" in capsys.readouterr().err


def test_missing_empty_and_malformed_data_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        calibration_windows(tmp_path / "nope.jsonl", _Tokenizer(), 4, 32, 2048)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.jsonl"):
        calibration_windows(tmp_path / "empty.jsonl", _Tokenizer(), 4, 32, 2048)
    bad = _rows(tmp_path / "bad.jsonl", 3)
    bad.write_text(bad.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:4"):
        calibration_windows(bad, _Tokenizer(), 4, 32, 2048)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"int4_algo": "gptq"}, "--int4-algo gptq needs --calibration-data FILE"),
        (
            {"int4_algo": "awq", "precision": "fp32", "calibration_data": "d.jsonl"},
            "needs --precision int4 or int8",
        ),
    ],
)
def test_calibrated_methods_refuse_impossible_options(options, message):
    with pytest.raises(ValidationError, match=message):
        OptimizeConfig(model="m", out="o", **options)


def test_other_methods_need_no_calibration_data():
    cfg = OptimizeConfig(model="m", out="o", int4_algo="k_quant")
    assert cfg.calibration_data is None


PHI3_MINI = {
    "model_type": "phi3",
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("algo", ["gptq", "awq"])
def test_the_calibration_phase_is_part_of_the_memory_estimate(algo):
    from slmforge.optimize import memory
    from slmforge.train.memory import GIB
    from slmforge.train.shape import shape_from_config

    shape = shape_from_config(PHI3_MINI, None)
    checkpoint = 2 * shape.params
    calibrate = memory.calibration_estimate(shape, algo, checkpoint, 32, 512)
    # the bf16 checkpoint, one layer in fp32, activations, Hessians, GPTQ's packed weights and
    # its working copy of the (untied) LM head
    assert checkpoint < calibrate.total < checkpoint + 4.5 * GIB, calibrate.describe()
    if algo == "gptq":
        assert calibrate.components["Hessians"] == (6 * 3072**2 + 8192**2) * 4
        assert calibrate.components["LM head (GPTQ)"] == 32064 * 3072 * 5 + 3072**2 * 4
    plain = memory.optimize_estimate(shape, "int4", checkpoint, True, 8, 16)
    with_calibration = memory.optimize_estimate(shape, "int4", checkpoint, True, 8, 16, calibrate)
    assert with_calibration.total == max(plain.total, calibrate.total)
    assert "calibrate" in with_calibration.describe()
