"""Function-calling rows in eval: the reference's calls and an answer's calls in one text form,
the row's tools offered to the target, and the tool-call metrics."""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.data.sample import write_sample
from slmforge.evaluate.dataset import read_rows
from slmforge.evaluate.metrics import resolve
from slmforge.evaluate.partial import Answer
from slmforge.runtime.engine import Completion, ToolCall

CALL = '<tool_call>\n{"name": "get_local_time", "arguments": {"city": "Oslo"}}\n</tool_call>'


def score(name: str, answers: list[str], references: list[str], tools=None) -> list[float]:
    (metric,) = resolve([name])
    return list(metric.score(answers, references, tools))


def test_tool_rows_carry_their_tools_and_a_reference_in_call_form(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "tools.jsonl", kind="tools", count=12, seed=1)
    rows = read_rows(path)
    assert len(rows) == 12 and all(len(r.tools) == 4 for r in rows)
    assert rows[0].prompt[-1]["role"] == "user"
    parsed = json.loads(rows[0].reference.split("\n")[1])
    assert parsed["name"] in {t["function"]["name"] for t in rows[0].tools}
    assert rows[0].key() != read_rows(path)[1].key()


def test_an_answer_that_calls_is_written_in_the_same_form() -> None:
    call = ToolCall("call_1", "get_local_time", '{"city":"Oslo"}')
    answer = Answer.of(Completion("", "tool_calls", tool_calls=[call]))
    assert answer.text == CALL


def test_tool_call_metrics_compare_names_and_argument_values() -> None:
    other_args = CALL.replace("Oslo", "Rome")
    other_name = CALL.replace("get_local_time", "get_weather")
    answers = [CALL, CALL.replace('{"city": "Oslo"}', '{ "city":"Oslo" }'), other_args,
               other_name, "It is noon.", "<tool_call>{broken</tool_call>"]  # fmt: skip
    references = [CALL] * 6
    assert score("tool_call_exact", answers, references) == [1, 1, 0, 0, 0, 0]
    assert score("tool_name_accuracy", answers, references) == [1, 1, 1, 0, 0, 0]
    assert score("tool_call_exact", ["It is noon.", CALL], ["Noon.", "Noon."]) == [1, 0]


def test_tool_call_accuracy_checks_arguments_against_the_declared_schema() -> None:
    tools = [{"type": "function", "function": {"name": "get_local_time", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"], "additionalProperties": False}}}]  # fmt: skip
    answers = [CALL, CALL.replace("Oslo", "Rome"), CALL.replace("Oslo", "Llanfairpwllgwyngyll"),
               CALL.replace('"city"', '"town"'), CALL.replace('{"city": "Oslo"}', '"Oslo"'),
               CALL.replace("get_local_time", "get_weather"), "It is noon."]  # fmt: skip
    scores = score("tool_call_accuracy", answers, [CALL] * 7, [tools] * 7)
    assert scores == [1, 1, 0, 0, 0, 0, 0]  # other valid values count; invalid ones do not
    assert score("tool_call_accuracy", ["It is noon.", CALL], ["Noon.", "Noon."]) == [1, 0]
