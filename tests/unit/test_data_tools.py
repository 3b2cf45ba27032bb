"""Function-calling rows: OpenAI fine-tuning format with tools, LLaMA-Factory and Hermes turns,
checks of every call against the declared schema, conversion, stats and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from slmforge.config.data import ValidateConfig
from slmforge.data.formats import read_examples, read_with_findings
from slmforge.data.stats import compute_stats
from slmforge.data.validate import run_validate
from slmforge.data.writing import write_examples
from slmforge.errors import DataError

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


def call(arguments: str, name: str = "get_weather", call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def row(arguments: str = '{"city": "Lisbon"}', name: str = "get_weather", **changes) -> dict:
    messages = [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": "Weather in Lisbon?"},
        {"role": "assistant", "content": None, "tool_calls": [call(arguments, name)]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Lisbon."},
    ]
    return {"messages": messages, "tools": [WEATHER], **changes}


def findings_of(tmp_path: Path, rows: list[dict]) -> list:
    _, findings = read_with_findings(write_jsonl(tmp_path / "tools.jsonl", rows))
    return findings


def test_openai_tool_rows_read_and_round_trip(tmp_path: Path) -> None:
    (example,) = read_examples(write_jsonl(tmp_path / "in.jsonl", [row()]))
    assert example.tools == [WEATHER] and example.uses_tools
    assert example.messages[2] == {"role": "assistant", "content": "", "tool_calls": [call(
        '{"city": "Lisbon"}')]}  # fmt: skip
    assert example.messages[3]["tool_call_id"] == "call_1"
    out = write_examples([example], tmp_path / "out.jsonl")
    written = json.loads(out.read_text())
    assert written == row()  # content null again, tools kept


def test_a_call_to_an_undeclared_function_names_line_and_field(tmp_path: Path) -> None:
    (finding,) = findings_of(tmp_path, [row(), row(name="book_flight")])
    assert finding.line == 2
    assert finding.field == "messages[2].tool_calls[0].function.name"
    assert "'book_flight', which is not a declared function (get_weather)" in finding.message


@pytest.mark.parametrize(
    ("arguments", "field", "says"),
    [
        ('{"unit": "c"}', "messages[2].tool_calls[0].function.arguments", "'city' is a required"),
        ('{"city": "Lisbon", "unit": "k"}', "messages[2].tool_calls[0].function.arguments.unit",
         "'k' is not one of"),
        ('{"city": ', "messages[2].tool_calls[0].function.arguments", "not valid JSON"),
        ('["Lisbon"]', "messages[2].tool_calls[0].function.arguments", "expected a JSON object"),
    ],
)  # fmt: skip
def test_arguments_must_parse_and_match_the_schema(tmp_path, arguments, field, says) -> None:
    (finding,) = findings_of(tmp_path, [row(arguments)])
    assert finding.field == field and says in finding.message, finding


def test_tool_replies_and_order_are_checked(tmp_path: Path) -> None:
    orphan = row()
    orphan["messages"][3]["tool_call_id"] = "call_9"
    early = row()
    early["messages"].insert(2, {"role": "tool", "tool_call_id": "call_1", "content": "x"})
    undeclared = row()
    del undeclared["tools"]
    findings = findings_of(tmp_path, [orphan, early, undeclared])
    by_line = {line: [f for f in findings if f.line == line] for line in (1, 2, 3)}
    assert [(f.field, f.rule) for f in by_line[1]] == [
        ("messages[3].tool_call_id", "unknown_tool_call")
    ]
    order = next(f for f in by_line[2] if f.rule == "role_order")
    assert order.field == "messages[2].role"
    assert "expected an assistant message here, got tool" in order.message
    assert "declares no tools" in by_line[3][0].message


def test_bad_tool_definitions_are_reported(tmp_path: Path) -> None:
    broken = row(tools=[{"type": "function", "function": {"name": "has space"}}])
    bad_schema = row(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "objekt"}}}])  # fmt: skip
    findings = findings_of(tmp_path, [broken, bad_schema])
    assert findings[0].field == "tools[0].name"
    assert findings[1].field == "tools[0].parameters" and "not a valid JSON schema" in (
        findings[1].message
    )


def test_llama_factory_and_hermes_turns_become_tool_calls(tmp_path: Path) -> None:
    factory = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": json.dumps(
                {"name": "get_weather", "arguments": {"city": "Oslo"}})},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "3 degrees."},
        ],
        "tools": json.dumps([WEATHER["function"]]),
    }  # fmt: skip
    hermes = {
        "conversations": [
            {"from": "human", "value": "Weather in Rome?"},
            {"from": "gpt", "value": "Checking.\n<tool_call>\n" + json.dumps(
                {"name": "get_weather", "arguments": {"city": "Rome"}}) + "\n</tool_call>"},
            {"from": "tool", "value": "<tool_response>18</tool_response>"},
            {"from": "gpt", "value": "18 degrees."},
        ],
        "tools": [WEATHER],
    }  # fmt: skip
    first, second = read_examples(write_jsonl(tmp_path / "sg.jsonl", [factory, hermes]))
    assert first.messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Oslo"}'}  # fmt: skip
    assert first.messages[2] == {"role": "tool", "content": '{"temp": 3}',
                                 "tool_call_id": "call_L1_0"}  # fmt: skip
    assert second.messages[1]["content"] == "Checking."
    assert second.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_formats_that_cannot_hold_tools_refuse_with_the_line(tmp_path: Path) -> None:
    examples = read_examples(write_jsonl(tmp_path / "in.jsonl", [row()]))
    with pytest.raises(DataError, match="tool definitions or calls"):
        write_examples(examples, tmp_path / "out.jsonl", "prompt_response")
    assert not (tmp_path / "out.jsonl").exists()


def test_stats_count_tool_rows_and_calls(tmp_path: Path) -> None:
    plain = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }
    examples = read_examples(write_jsonl(tmp_path / "in.jsonl", [row(), row(), plain]))
    stats = compute_stats(examples)
    assert (stats.tool_examples, stats.tool_calls) == (2, 2)
    assert stats.functions_called == {"get_weather": 2}


def test_identical_tool_rows_are_flagged_and_different_arguments_are_not(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [row(), row(), row('{"city": "Porto"}')])
    report = run_validate(ValidateConfig(files=[path], min_examples=0))
    identical = [f for f in report.findings if f.rule == "identical_pair"]
    assert len(identical) == 1 and "lines 1, 2" in identical[0].message


def test_augment_refuses_tool_rows_by_line(tmp_path: Path) -> None:
    from slmforge.config.data import AugmentConfig
    from slmforge.data.augment import augment
    from slmforge.errors import InputError

    plain = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    }
    path = write_jsonl(tmp_path / "in.jsonl", [plain, row()])
    with pytest.raises(InputError, match="line 2: rows with tools"):
        augment(AugmentConfig(input=path, out=tmp_path / "out.jsonl", strategy=["noise"]))
    assert not (tmp_path / "out.jsonl").exists()
