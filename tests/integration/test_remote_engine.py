"""RemoteEngine against the fake OpenAI-compatible server (a stand-in for a cloud model)."""

from __future__ import annotations

import socket

import openai
import pytest

from fake_openai import FakeOpenAI, Reply
from slmforge.errors import RemoteError
from slmforge.runtime.engine import GenParams, complete
from slmforge.runtime.remote import RemoteEngine, parse_retry_after

pytestmark = pytest.mark.integration

KEY = "sk-test-0123456789abcdef"
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.reset()  # one server for the module; each test scripts its own replies
    yield


def make_engine(fake: FakeOpenAI, sleeps: list[float] | None = None, **options) -> RemoteEngine:
    record = sleeps if sleeps is not None else []
    options = {"api_key": KEY, "max_backoff_s": 0.05, "sleep": record.append, **options}
    return RemoteEngine("teacher", fake.base_url, **options)


def test_streams_text_then_final_delta_with_usage_and_timings(fake) -> None:
    fake.script("Hello there, traveller. Enjoy Lisbon!")
    deltas = list(make_engine(fake).chat(HELLO, GenParams(max_tokens=50)))
    texts = [d.text for d in deltas[:-1]]
    assert len(texts) == 5  # one delta per streamed chunk, not one blob
    assert "".join(texts) == "Hello there, traveller. Enjoy Lisbon!"
    final = deltas[-1]
    assert final.text == "" and final.finish_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (2, 5)
    assert final.timings is not None and final.timings.ttft_s is not None
    assert final.timings.total_s >= final.timings.ttft_s
    body = fake.chat_requests()[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "teacher" and body["max_tokens"] == 50


def test_finish_reason_length_when_cut_by_max_tokens(fake) -> None:
    fake.script("one two three four five six")
    result = complete(make_engine(fake), HELLO, GenParams(max_tokens=3))
    assert result.text == "one two three "
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_stop_seed_and_sampling_params_are_passed_through(fake) -> None:
    fake.script("first part END second part")
    params = GenParams(stop=["END"], seed=7, temperature=0.5, top_p=0.9, top_k=20)
    result = complete(make_engine(fake), HELLO, params)
    assert result.text == "first part "
    body = fake.chat_requests()[0].body
    assert body["stop"] == ["END"] and body["seed"] == 7
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.5, 0.9, 20)


def test_response_formats_are_passed_through(fake) -> None:
    """The cloud endpoint is a stand-in (no cloud here): what matters is the request body."""
    schema = {"name": "trip", "schema": {"type": "object"}, "strict": True}
    fake.script('{"a": 1}')
    complete(make_engine(fake), HELLO, GenParams(json_schema=schema))
    fake.script("{}")
    complete(make_engine(fake), HELLO, GenParams(json_mode=True))
    first, second = (r.body for r in fake.chat_requests())
    assert first["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert second["response_format"] == {"type": "json_object"}


def test_tools_are_passed_through_and_streamed_calls_assembled(fake) -> None:
    """The stand-in's request body carries the tools; the calls of a streamed reply (pieces as
    OpenAI sends them) come back whole."""
    from openai.types.chat import ChatCompletionChunk

    from slmforge.runtime.remote import _deltas

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fake.script("ok")
    complete(make_engine(fake), HELLO, GenParams(tools=tools, tool_choice="required"))
    body = fake.chat_requests()[0].body
    assert body["tools"] == tools and body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is True

    def chunk(delta: dict, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})  # fmt: skip

    head = [
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type":
               "function", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
    ]  # fmt: skip
    *_, calls_delta, final = list(_deltas(head, iter([])))
    (call,) = calls_delta.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')
    assert final.finish_reason == "tool_calls"


def test_adapter_is_the_model_name_on_the_server(fake) -> None:
    fake.script("ok")
    complete(make_engine(fake), HELLO, GenParams(), adapter="travel")
    assert fake.chat_requests()[0].body["model"] == "travel"


def test_missing_usage_chunk_counts_zero(fake) -> None:
    fake.script(Reply(text="no usage here", usage=False))
    result = complete(make_engine(fake), HELLO, GenParams())
    assert result.text == "no usage here"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (0, 0)


def test_429_then_success_honours_retry_after_capped(fake) -> None:
    fake.script(Reply.failure(429, retry_after=30), Reply.failure(429, retry_after=0.01), "done")
    sleeps: list[float] = []
    engine = make_engine(fake, sleeps)
    result = complete(engine, HELLO, GenParams())
    assert result.text == "done"
    assert engine.retries == 2 and len(fake.chat_requests()) == 3
    assert sleeps == [0.05, 0.01]  # 30 s capped at max_backoff_s; a small value is used as is


def test_5xx_and_garbled_bodies_are_retried_with_bounded_backoff(fake) -> None:
    fake.script(Reply.failure(503), Reply.garbled(), Reply(text="lost", fail_after_chunks=0), "ok")
    sleeps: list[float] = []
    result = complete(make_engine(fake, sleeps, backoff_s=0.01), HELLO, GenParams())
    assert result.text == "ok"
    assert len(sleeps) == 3 and all(0 < s <= 0.05 for s in sleeps)


def test_500_exhausted_raises_remote_error_with_status(fake) -> None:
    fake.script(*[Reply.failure(500)] * 4)
    sleeps: list[float] = []
    engine = make_engine(fake, sleeps, max_retries=3)
    with pytest.raises(RemoteError) as caught:
        complete(engine, HELLO, GenParams())
    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value) and "after 4 attempts" in str(caught.value)
    assert len(fake.chat_requests()) == 4 and len(sleeps) == 3


def test_retry_time_budget_is_bounded(fake) -> None:
    fake.script(Reply.failure(429, retry_after=1))
    engine = make_engine(fake, max_backoff_s=10, max_total_s=0.5)
    with pytest.raises(RemoteError, match="out of retry time") as caught:
        complete(engine, HELLO, GenParams())
    assert caught.value.status == 429 and len(fake.chat_requests()) == 1


def test_client_errors_are_not_retried(fake) -> None:
    fake.script(Reply.failure(400))
    with pytest.raises(RemoteError) as caught:
        complete(make_engine(fake), HELLO, GenParams())
    assert caught.value.status == 400 and len(fake.chat_requests()) == 1


def test_failure_after_first_token_is_not_retried(fake) -> None:
    fake.script(Reply(text="partial answer that breaks", fail_after_chunks=2), "never used")
    deltas = []
    with pytest.raises(RemoteError, match="mid-stream"):
        deltas.extend(make_engine(fake).chat(HELLO, GenParams()))
    assert "".join(d.text for d in deltas) == "partial answer "
    assert len(fake.chat_requests()) == 1


def test_api_key_never_appears_in_errors(fake) -> None:
    wrong = "sk-wrong-key-987654321"
    engine = RemoteEngine("teacher", fake.base_url, api_key=wrong, max_retries=0)
    with pytest.raises(RemoteError) as caught:
        complete(engine, HELLO, GenParams())
    assert caught.value.status == 401
    assert fake.chat_requests()[0].headers["authorization"] == f"Bearer {wrong}"  # it was sent
    for text in (str(caught.value), repr(caught.value.args)):
        assert wrong not in text and "987654321" not in text
    assert "check the API key" in str(caught.value)


def test_key_from_env_var(fake, monkeypatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", KEY)
    fake.script("from env")
    engine = RemoteEngine("teacher", fake.base_url, api_key_env="TEACHER_KEY")
    assert complete(engine, HELLO, GenParams()).text == "from env"


def test_connection_refused_is_retried_then_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    sleeps: list[float] = []
    engine = RemoteEngine(
        "m",
        f"http://127.0.0.1:{port}/v1",
        max_retries=2,
        max_backoff_s=0.01,
        sleep=sleeps.append,
        timeout_s=5,
    )
    with pytest.raises(RemoteError, match="connection failed") as caught:
        complete(engine, HELLO, GenParams())
    assert caught.value.status is None and len(sleeps) == 2


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_fake_server_speaks_plain_openai_too(fake) -> None:
    """The double also answers non-streaming requests and lists models, like the real API."""
    client = openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    fake.script("plain answer")
    reply = client.chat.completions.create(model="teacher", messages=HELLO)
    assert reply.choices[0].message.content == "plain answer"
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    assert [m.id for m in client.models.list()] == ["fake-model"]
    fake.responder = lambda body: f"echo: {body['messages'][-1]['content']}"
    reply = client.chat.completions.create(model="teacher", messages=HELLO)
    assert reply.choices[0].message.content == "echo: Say hello"
