"""Tool-call parsers per syntax, the stream wrapper that turns a reply's calls into ToolCalls,
and the grammars that force a call."""

from __future__ import annotations

import json

import pytest

from slmforge.runtime.engine import Delta, Usage
from slmforge.runtime.tool_calls import (
    PARSERS,
    forced_grammar,
    parser_for,
    split_at_start,
    with_tool_calls,
)

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


def run(pieces: list[str], parser: str, finish: str = "stop") -> tuple[str, list, str]:
    deltas = [Delta(text=p, tokens=1) for p in pieces] + [
        Delta(finish_reason=finish, usage=Usage())
    ]
    out = list(with_tool_calls(iter(deltas), PARSERS[parser]))
    text = "".join(d.text for d in out)
    calls = [c for d in out for c in d.tool_calls or []]
    return text, calls, out[-1].finish_reason


@pytest.mark.parametrize(
    ("parser", "pieces"),
    [
        ("hermes", ["Let me check.", "\n<tool", '_call>\n{"name": "get_weather", ',
                    '"arguments": {"city": "Oslo"}}\n</tool_call>']),
        ("llama3_json", ['{"name": "get_weather", "parameters": ', '{"city": "Oslo"}}']),
        ("mistral", ["[TOOL_CALLS] ", '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]']),
        ("phi4", ["<|tool_call|>", '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
                  "<|/tool_call|>"]),
    ],
)  # fmt: skip
def test_each_syntax_becomes_tool_calls(parser, pieces) -> None:
    text, calls, finish = run(pieces, parser)
    assert finish == "tool_calls"
    (call,) = calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.id.startswith("call_")
    assert text == ("Let me check.\n" if parser == "hermes" else "")


def test_several_hermes_calls_in_one_reply() -> None:
    block = '<tool_call>\n{{"name": "{}", "arguments": {{}}}}\n</tool_call>'
    _, calls, _ = run([block.format("a") + "\n" + block.format("b")], "hermes")
    assert [c.name for c in calls] == ["a", "b"] and len({c.id for c in calls}) == 2


def test_text_that_does_not_parse_is_released_as_text() -> None:
    pieces = ["Use <tool_call>", " wisely: {not json} </tool_call> ok"]
    text, calls, finish = run(pieces, "hermes")
    assert calls == [] and finish == "stop" and text == "".join(pieces)


def test_a_partial_marker_is_held_until_the_next_piece_decides() -> None:
    assert split_at_start("hello <tool", "<tool_call>") == ("hello ", "<tool", False)
    assert split_at_start("a < b", "<tool_call>") == ("a < b", "", False)
    text, calls, _ = run(["x <tool", "box"], "hermes")
    assert text == "x <toolbox" and calls == []


def test_a_reply_cut_by_max_tokens_keeps_finish_reason_length() -> None:
    text, calls, finish = run(['<tool_call>\n{"name": "get_weather", "argu'], "hermes", "length")
    assert finish == "length" and calls == [] and text.startswith("<tool_call>")


def test_the_parser_follows_the_template() -> None:
    class Tokenizer:
        chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"

    assert parser_for(Tokenizer()).name == "hermes"  # no tool support: slmforge's fallback
    Tokenizer.chat_template = (
        "{% if tools %}{{ tools }}{% endif %}{% for m in messages %}<|start_header_id|>"
        "{{ m.tool_calls }}<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"
    )
    assert parser_for(Tokenizer()).name == "llama3_json"
    Tokenizer.chat_template = (  # Phi-4-mini's: tools from the system message's own field
        "{% for message in messages %}{% if 'tools' in message %}<|tool|>{{ message['tools'] }}"
        "<|/tool|>{% endif %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    )
    assert parser_for(Tokenizer()).name == "phi4"


def test_forced_grammars_name_the_chosen_functions_only() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    grammar = forced_grammar(PARSERS["hermes"], [WEATHER], named, True)
    assert '"const": "get_weather"' in grammar and '"additionalProperties": false' in grammar
    assert "call)*" not in grammar  # a named function is one call
    assert "call)*" in forced_grammar(PARSERS["hermes"], [WEATHER], "required", True)
    assert forced_grammar(PARSERS["hermes"], [WEATHER], "auto", True) is None
