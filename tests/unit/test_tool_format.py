"""Tool definitions, calls and replies through chat templates with and without tool support,
and which characters fine-tuning trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import word_tokenizer
from slmforge.models.chat import PHI3_TEMPLATE
from slmforge.models.tool_format import (
    hermes_messages,
    render_chat,
    template_knows_tools,
    template_takes_system_tools,
)
from slmforge.train.collate import assistant_spans, encode

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "TOOLRESULT 3C"},
    {"role": "assistant", "content": "It is 3 degrees."},
]
# A template in the shape of Qwen2.5's: tools in the system turn, calls as <tool_call> JSON
# built from argument objects, tool replies inside a user turn.
TOOLS_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}<|system|> {{ m.content }}"
    "{% if tools %} TOOLS {% for t in tools %}{{ t.function.name }} {% endfor %}{% endif %}<|end|> "
    "{% elif m.role == 'assistant' and m.tool_calls %}<|assistant|> "
    "{% for c in m.tool_calls %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }} "
    "{% endfor %}<|end|> "
    "{% elif m.role == 'tool' %}<|user|> RESULT {{ m.content }} <|end|> "
    "{% else %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

# Phi-4-mini's hub template: tool definitions from the system message's own `tools` field.
PHI4_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = word_tokenizer(tmp_path_factory.mktemp("tok"))
    return AutoTokenizer.from_pretrained(folder)


def trained_text(text: str, spans: list[range]) -> str:
    return "".join(text[s.start : s.stop] for s in spans)


def test_a_template_without_tools_gets_the_hermes_fallback(tokenizer) -> None:
    tokenizer.chat_template = PHI3_TEMPLATE
    assert not template_knows_tools(PHI3_TEMPLATE)
    text, spans = assistant_spans(tokenizer, MESSAGES, ["<|end|>"], [WEATHER])
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in text  # declared in the system turn
    assert text.index("Be brief.") < text.index("<tools>")
    trained = trained_text(text, spans)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert call in trained and "It is 3 degrees." in trained
    assert "TOOLRESULT" not in trained and "<tool_response>\nTOOLRESULT 3C" in text
    assert "Weather in Oslo?" not in trained and "<|assistant|>" not in trained


def test_a_template_with_tools_renders_its_own_syntax_with_argument_objects(tokenizer) -> None:
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert template_knows_tools(TOOLS_TEMPLATE)
    text, spans = assistant_spans(tokenizer, MESSAGES, ["<|end|>"], [WEATHER])
    assert "TOOLS get_weather" in text
    trained = trained_text(text, spans)
    assert 'CALL get_weather {"city": "Oslo"} <|end|>' in trained  # an object, not a string
    assert "It is 3 degrees." in trained and "RESULT" not in trained


def test_phi4_mini_gets_its_own_tool_convention_not_the_hermes_fallback(tokenizer) -> None:
    tokenizer.chat_template = PHI4_TEMPLATE
    assert template_takes_system_tools(PHI4_TEMPLATE) and not template_knows_tools(PHI4_TEMPLATE)
    text, spans = assistant_spans(tokenizer, MESSAGES, ["<|end|>"], [WEATHER])
    signatures = json.dumps([WEATHER["function"]])
    assert text.startswith(f"<|system|>Be brief.<|tool|>{signatures}<|/tool|><|end|>")
    assert "<tools>" not in text and "<tool_call>" not in text
    trained = trained_text(text, spans)
    call = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]<|/tool_call|>'
    assert call in trained and "It is 3 degrees." in trained
    assert "<|tool|>TOOLRESULT 3C<|end|>" in text and "TOOLRESULT" not in trained
    # Without a system message the tools still get one, as Microsoft's examples write it.
    bare = render_chat(tokenizer, MESSAGES[1:2], [WEATHER], generation_prompt=True)
    assert bare.startswith("<|system|>You are a helpful assistant with some tools.<|tool|>")
    assert bare.endswith("<|user|>Weather in Oslo?<|end|><|assistant|>")


def test_encode_labels_only_the_assistant_turns(tokenizer) -> None:
    tokenizer.chat_template = TOOLS_TEMPLATE
    item = encode(tokenizer, MESSAGES, 512, stops=["<|end|>"], tools=[WEATHER])
    rendered = render_chat(tokenizer, MESSAGES, [WEATHER])
    assert len(item.input_ids) == len(rendered.split())  # one token per word
    words = rendered.split()
    trained = [w for w, label in zip(words, item.labels, strict=True) if label != -100]
    assert "CALL" in trained and "RESULT" not in trained and "TOOLS" not in trained


def test_replies_in_a_row_share_one_user_turn_so_strict_templates_still_alternate() -> None:
    second = {**CALL, "id": "c2"}
    messages = [*MESSAGES[:2], {"role": "assistant", "content": "", "tool_calls": [CALL, second]},
                {"role": "tool", "tool_call_id": "c1", "content": "a"},
                {"role": "tool", "tool_call_id": "c2", "content": "b"}, MESSAGES[-1]]  # fmt: skip
    roles = [m["role"] for m in hermes_messages(messages, [WEATHER])]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_plain_conversations_render_as_before(tokenizer, tmp_path: Path) -> None:
    tokenizer.chat_template = PHI3_TEMPLATE
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render_chat(tokenizer, plain) == tokenizer.apply_chat_template(plain, tokenize=False)
