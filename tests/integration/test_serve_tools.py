"""Function calling against a real server on 127.0.0.1, driven by the official `openai` client:
forced calls (required, named) that parse and validate, streamed tool-call deltas, tool results
sent back, and bad tool requests as 400s naming the field. The tiny model has never seen a tool;
the grammar engine is what makes its calls valid."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from jsonschema import validate
from pydantic import Field

from slmforge.config.serve import ServeConfig
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module", params=["torch", "onnx", "onnx-batched"])
def server(request, tiny_llama, llama_onnx) -> Iterator[RunningServer]:
    model = tiny_llama if request.param == "torch" else llama_onnx
    concurrency = 4 if request.param == "onnx-batched" else 1
    running = start_in_thread(ServeConfig(model=str(model), port=0, max_concurrency=concurrency))
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


def ask(server, client, **options):
    options = {"max_tokens": 160, "temperature": 0.7, "seed": 3, "tools": TOOLS} | options
    name = server.server.state.served.name
    return client.chat.completions.create(model=name, messages=options.pop("messages", ASK),
                                          **options)  # fmt: skip


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_forced_calls_parse_and_match_the_declared_parameters(server, client, choice) -> None:
    reply = ask(server, client, tool_choice=choice, parallel_tool_calls=False)
    choice_ = reply.choices[0]
    assert choice_.finish_reason == "tool_calls", choice_
    assert choice_.message.content is None
    (call,) = choice_.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_streamed_tool_calls_arrive_as_openai_streams_them(server, client) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(ask(server, client, tool_choice=named, stream=True))
    pieces = [c.choices[0].delta.tool_calls for c in chunks if c.choices and
              c.choices[0].delta.tool_calls]  # fmt: skip
    first, *rest = [p for group in pieces for p in group]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    arguments = "".join(p.function.arguments for p in rest)
    validate(json.loads(arguments), schema_of("get_weather"))
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["tool_calls"]


def test_a_tool_result_sent_back_gets_an_answer(server, client) -> None:
    first = ask(server, client, tool_choice="required", parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 3}'},
    ]
    reply = ask(server, client, messages=messages, tool_choice="none", max_tokens=8)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "book"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
         "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"messages": [*ASK, {"role": "tool", "content": "3"}]}, "messages[1].tool_call_id"),
        ({"messages": [*ASK, {"role": "tool", "content": "3", "tool_call_id": "call_x"}]},
         "messages[1].tool_call_id"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "objekt"}}}]}, "tools[0].function.parameters"),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f",
          "parameters": {"type": "object", "properties": {"a": {"type": "string",
          "pattern": "(?<=x)y"}}}}}]}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400_naming_the_field(server, client, options, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(server, client, **options)
    assert caught.value.param == param, caught.value.body


@pytest.fixture(scope="module")
def batched(llama_onnx) -> Iterator[RunningServer]:
    running = start_in_thread(ServeConfig(model=str(llama_onnx), port=0, max_concurrency=4))
    yield running
    running.stop()


def _sampled_call(server: RunningServer, index: int) -> tuple[str, dict]:
    """Request `index` of 20: required or named, streamed or not, temperature 1."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    choice = "required" if index % 2 else {"type": "function", "function": {"name": "get_time"}}
    options = {
        "model": server.server.state.served.name,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": choice,
        "parallel_tool_calls": False,
        "temperature": 1.0,
        "seed": 100 + index,
        "max_tokens": 200,
    }
    if index % 4 < 2:
        reply = client.chat.completions.create(**options)
        (call,) = reply.choices[0].message.tool_calls
        return call.function.name, json.loads(call.function.arguments)
    with client.chat.completions.stream(**options) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    return call.function.name, json.loads(call.function.arguments)


def test_twenty_sampled_forced_calls_all_validate(batched) -> None:
    """Acceptance: required and named, streamed and not, temperature 1: 20 of 20 valid."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        calls = list(pool.map(lambda i: _sampled_call(batched, i), range(20)))
    for index, (name, arguments) in enumerate(calls):
        if index % 2 == 0:
            assert name == "get_time"
        validate(arguments, schema_of(name))


def test_twenty_parsed_structured_outputs(batched) -> None:
    """Acceptance: `client.beta.chat.completions.parse(response_format=Model)` parses 20/20."""
    from typing import Literal

    from pydantic import BaseModel

    class Trip(BaseModel):
        city: str = Field(max_length=12)
        season: Literal["spring", "summer", "autumn", "winter"]
        nights: int = Field(ge=1, le=9)

    client = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="none", max_retries=0)
    for seed in range(20):
        reply = client.beta.chat.completions.parse(
            model=batched.server.state.served.name, messages=ASK, response_format=Trip,
            temperature=1.0, seed=seed, max_tokens=200,
        )  # fmt: skip
        parsed = reply.choices[0].message.parsed
        assert isinstance(parsed, Trip), reply.choices[0].message.content


def test_a_phi4_mini_template_gets_calls_in_its_own_syntax(tiny_llama, tmp_path) -> None:
    """A model with Phi-4-mini's template: the prompt carries the tools between `<|tool|>` and
    `<|/tool|>`, a forced call is written as `<|tool_call|>[...]<|/tool_call|>` and comes back as
    `message.tool_calls`."""
    import shutil

    from slmforge.models.load import load_tokenizer
    from slmforge.models.tool_format import render_chat

    model = tmp_path / "phi4-like"
    shutil.copytree(tiny_llama, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = PHI4_TEMPLATE
    config_path.write_text(json.dumps(config))
    prompt = render_chat(load_tokenizer(str(model)), ASK, TOOLS, generation_prompt=True)
    assert "<|tool|>" in prompt and '"name": "get_weather"' in prompt and "<tools>" not in prompt
    running = start_in_thread(ServeConfig(model=str(model), port=0))
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model=running.server.state.served.name, messages=ASK, tools=TOOLS, max_tokens=160,
            tool_choice="required", parallel_tool_calls=False, temperature=0.7, seed=3,
        )  # fmt: skip
    finally:
        running.stop()
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    validate(json.loads(call.function.arguments), schema_of(call.function.name))


PHI4_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
