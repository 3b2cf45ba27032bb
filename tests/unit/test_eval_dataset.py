"""Eval rows from data files: prompt, reference (or none), context; bad rows named by line."""

from __future__ import annotations

import pytest

from data_helpers import write_jsonl
from slmforge.config.data import ReadOptions
from slmforge.config.evaluate import EvalConfig, parse_gate, target_spec
from slmforge.errors import ConfigError, DataError, InputError
from slmforge.evaluate.dataset import read_rows


def test_prompt_response_with_context(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Where?", "response": "Lisbon.", "context": "We went to Lisbon."},
            {"prompt": "When?", "response": "  "},  # blank response: no reference
            {"prompt": "Why?"},
        ],
    )
    rows = read_rows(path, ReadOptions(system_prompt="Be brief."))
    assert [r.reference for r in rows] == ["Lisbon.", None, None]
    assert rows[0].context == "We went to Lisbon." and rows[1].context is None
    assert rows[0].prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where?"},
    ]
    assert [r.line for r in rows] == [1, 2, 3] and rows[0].key() != rows[1].key()


def test_messages_reference_is_the_last_assistant_turn(tmp_path):
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Lisbon tips?"},
    ]
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"messages": [*turns, {"role": "assistant", "content": "Ride Tram 28."}]},
            {"messages": turns},
        ],
    )
    first, second = read_rows(path)
    assert first.prompt == turns and first.reference == "Ride Tram 28."
    assert second.prompt == turns and second.reference is None
    assert first.question == "Lisbon tips?"


def test_bad_rows_are_named_by_line(tmp_path):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok", "response": "fine"},
            {"prompt": 3, "response": "x"},
            {"messages": [{"role": "assistant", "content": "starts wrong"}]},
        ],
    )
    with pytest.raises(DataError) as info:
        read_rows(path)
    lines = {f.line for f in info.value.findings}
    assert lines == {2, 3} and "bad.jsonl:2 [prompt]: expected a string" in str(info.value)


def test_limit_empty_and_missing(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": f"q{i}", "response": "a"} for i in range(5)]
    )
    assert len(read_rows(path, limit=2)) == 2
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="no rows to evaluate"):
        read_rows(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="data file not found"):
        read_rows(tmp_path / "nope.jsonl")


def test_target_specs_and_gates():
    assert target_spec("base=models/base") == target_spec("base=models/base")
    assert target_spec("base=models/base").spec == "models/base"
    assert target_spec("out/tuned/").name == "tuned"
    assert target_spec("openai:gpt-4o@http://x/v1?a=b").name == "gpt-4o"
    assert parse_gate("tuned:f1=0.5").target == "tuned" and parse_gate("f1=0.5").value == 0.5
    with pytest.raises(ValueError, match="expected"):
        parse_gate("f1>0.5")


def test_config_names_bad_options(tmp_path):
    from slmforge.config import validate

    base = {"data": "d.jsonl", "out": "o"}
    with pytest.raises(ConfigError, match="target names must be unique"):
        validate(EvalConfig, {**base, "target": ["a=x", "a=y"]})
    with pytest.raises(ConfigError, match="not a number"):
        validate(EvalConfig, {**base, "target": ["a=x"], "fail_under": ["f1=high"]})
    with pytest.raises(ConfigError, match="no target 'c'"):
        validate(EvalConfig, {**base, "target": ["a=x"], "fail_under": ["c:f1=0.5"]})
