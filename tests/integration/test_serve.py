"""`slmforge serve` on 127.0.0.1, driven by the official `openai` client: the same tests for a
PyTorch model with two LoRA adapters and for its ONNX build with the adapters as files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from slmforge.config.serve import ServeConfig
from slmforge.runtime.engine import GenParams, complete
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

KEY = "sk-test-serve-0123456789"
ASK = [{"role": "user", "content": "What should I pack for a weekend in Lisbon?"}]


@pytest.fixture(scope="module", params=["torch", "onnx"])
def server(request, tiny_llama, llama_adapters, llama_onnx) -> Iterator[RunningServer]:
    if request.param == "torch":
        adapters = [f"{name}={path}" for name, path in llama_adapters.items()]
        config = ServeConfig(model=str(tiny_llama), adapter=adapters, port=0, api_key=KEY)
    else:
        config = ServeConfig(model=str(llama_onnx), port=0, api_key=KEY)
    running = start_in_thread(config)
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def base_name(server: RunningServer) -> str:
    return server.server.state.served.name


def chat(client: openai.OpenAI, model: str, **options):
    options = {"max_tokens": 16, "temperature": 0} | options
    return client.chat.completions.create(model=model, messages=ASK, **options)


def test_models_lists_the_base_and_every_adapter(server, client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [base_name(server), "travel", "terse"] or ids == [
        base_name(server),
        "terse",
        "travel",
    ]
    assert client.models.retrieve("travel").id == "travel"


def test_chat_answers_and_counts_tokens(server, client) -> None:
    reply = chat(client, base_name(server))
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 16


def test_streaming_equals_non_streaming_and_ends_with_usage(server, client) -> None:
    whole = chat(client, base_name(server), max_tokens=20)
    chunks = list(
        chat(
            client,
            base_name(server),
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_each_adapter_answers_differently_and_like_the_engine(server, client) -> None:
    """Per-request selection: the adapter's answer is the engine's own answer with it."""
    engine = server.server.state.served.engine
    answers = {}
    for model in (base_name(server), "travel", "terse"):
        answers[model] = chat(client, model, max_tokens=24).choices[0].message.content
        adapter = None if model == base_name(server) else model
        assert answers[model] == complete(engine, ASK, GenParams(max_tokens=24), adapter).text
    assert len(set(answers.values())) == 3, answers


def test_seeded_sampling_repeats_and_n_gives_several_choices(server, client) -> None:
    options = {"temperature": 1.0, "top_p": 0.9, "seed": 11, "max_tokens": 12}
    first = chat(client, "travel", n=3, **options)
    again = chat(client, "travel", n=3, **options)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1


def test_logprobs_are_the_models_distribution(server, client) -> None:
    reply = chat(client, base_name(server), max_tokens=8, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) >= 1
    text = "".join(entry.token for entry in content)
    assert reply.choices[0].message.content.startswith(text.strip()[:3])
    for entry in content:
        assert len(entry.top_logprobs) == 3
        best = entry.top_logprobs[0].logprob
        assert entry.logprob == pytest.approx(best)  # greedy picks the most likely token
        assert sum(np.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-6


def test_json_mode_output_is_always_a_json_object_prefix(server, client) -> None:
    reply = chat(client, base_name(server), max_tokens=40, response_format={"type": "json_object"})
    text = reply.choices[0].message.content
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert reply.choices[0].finish_reason == "length"


TRIP = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "season": {"enum": ["spring", "summer", "autumn", "winter"]},
        "nights": {"type": "integer", "minimum": 1, "maximum": 9},
        "museums": {"type": "boolean"},
    },
    "required": ["city", "season", "nights", "museums"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_replies_parse_and_validate(server, client, stream) -> None:
    """A tiny model that has never seen the schema still answers with JSON matching it, because
    the grammar engine allows only tokens that keep the reply inside the schema."""
    from jsonschema import validate

    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": TRIP, "strict": True}}
    for seed in range(3):
        options = dict(model=base_name(server), messages=ASK, max_tokens=120, seed=seed,
                       temperature=0.9, response_format=fmt)  # fmt: skip
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **options))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = next(c.choices[0].finish_reason for c in chunks if c.choices and
                          c.choices[0].finish_reason)  # fmt: skip
        else:
            reply = client.chat.completions.create(**options)
            text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert finish == "stop", text
        validate(json.loads(text), TRIP)


def test_a_schema_the_grammar_engine_cannot_use_is_400(server, client) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=base_name(server), messages=ASK, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": bad}},
        )  # fmt: skip
    assert caught.value.param == "response_format" and "look-around" in caught.value.message


def test_completions_accept_strings_token_ids_and_batches(server, client) -> None:
    engine = server.server.state.served.engine
    ids = engine.encode("The city of Lisbon is")
    by_text = client.completions.create(
        model=base_name(server), prompt="The city of Lisbon is", max_tokens=6, temperature=0
    )
    by_ids = client.completions.create(
        model=base_name(server), prompt=ids, max_tokens=6, temperature=0
    )
    batch = client.completions.create(
        model=base_name(server), prompt=[ids, ids[:3]], max_tokens=4, temperature=0, n=2
    )
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens == len(ids) + 3


def test_echo_logprobs_score_every_prompt_token_exactly(server, client, tiny_llama) -> None:
    """lm-eval's loglikelihood request: token ids in, a logprob for each prompt token out
    (None for the first), no BOS added, values equal to a PyTorch forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    engine = server.server.state.served.engine
    ids = engine.encode("Pack light shoes and a jacket")[1:]  # no BOS: the caller's ids only
    reply = client.completions.create(
        model=base_name(server), prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs[0] is None and len(logprobs.top_logprobs[1]) == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]]
    got = np.array(logprobs.token_logprobs[1 : len(ids)])
    np.testing.assert_allclose(got, expected.numpy(), atol=2e-4)
    assert reply.choices[0].text.startswith(engine.tokenizer.decode(ids))


def test_missing_or_wrong_key_is_401(server) -> None:
    for key in ("sk-wrong", ""):
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert "sk-wrong" not in str(caught.value.body)  # keys are never echoed
    response = httpx.get(f"{server.url}/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_unknown_model_is_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "no-such-model")
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"extra_body": {"best_guess": 1}}, "best_guess"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"n": 99}, "n"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
    ],
)
def test_bad_parameters_are_400_naming_the_field(server, client, options, param) -> None:
    options = dict(options)
    messages = options.pop("messages", ASK)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=base_name(server), messages=messages, **({"max_tokens": 4} | options)
        )
    error = caught.value.body
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert param.split("[")[0].split(".")[0] in error["message"], error


def test_ignored_fields_are_accepted(server, client) -> None:
    reply = chat(
        client,
        base_name(server),
        max_tokens=4,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        logit_bias={"5": 1},
        user="u1",
        metadata={"a": "b"},
    )
    assert reply.choices[0].message.content is not None


def test_over_long_prompt_is_400_context_length_exceeded_as_openai_answers(server, client) -> None:
    context = server.server.state.served.engine.context_length
    text = "travel " * (context + 10)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=base_name(server), messages=[{"role": "user", "content": text}]
        )
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "messages"
    assert f"maximum context length is {context} tokens" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=base_name(server), prompt=text, max_tokens=2)
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "prompt"


def test_health_and_metrics_count_requests(server, client) -> None:
    chat(client, base_name(server), max_tokens=3)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'slmforge_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
    assert "slmforge_time_to_first_token_seconds_bucket" in metrics
    assert "slmforge_queue_depth" in metrics
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_server_reads_onnx_and_torch_artifacts_by_manifest(llama_onnx: Path, tiny_llama) -> None:
    from slmforge.serve.models import detect_engine

    assert detect_engine(llama_onnx) == "onnx"
    assert detect_engine(Path(tiny_llama)) == "torch"
