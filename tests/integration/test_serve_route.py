"""`slmforge serve --route POLICY --cloud SPEC`, driven by the official `openai` client: the
tiny ONNX llama is the local model, a second slmforge server on the same model the cloud."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from slmforge.config.serve import ServeConfig
from slmforge.safety.verdicts import FilterVerdict
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What should I pack for a weekend in Lisbon?"}]
GREEDY = {"max_tokens": 12, "temperature": 0}


class BlockEveryAnswer:
    """A content filter that passes prompts and blocks any answer text (so local-first always
    falls back: deterministic, whatever the tiny model says)."""

    name = "block-answers"

    def check_input(self, messages) -> FilterVerdict:
        return FilterVerdict()

    def check_output(self, text: str) -> FilterVerdict:
        return FilterVerdict(blocked=bool(text.strip()), reason="answers are blocked")


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def servers(llama_onnx) -> Iterator[dict[str, RunningServer]]:
    cloud = start_in_thread(ServeConfig(model=str(llama_onnx), port=0, served_model_name="cloud"))
    spec = f"openai:cloud@{cloud.url}/v1"
    running = {"cloud": cloud}
    try:
        running["compare"] = start_in_thread(
            ServeConfig(model=str(llama_onnx), port=0, route="compare", cloud=spec)
        )
        running["local-first"] = start_in_thread(
            ServeConfig(model=str(llama_onnx), port=0, route="local-first", cloud=spec),
            content_filter=BlockEveryAnswer(),
        )
        yield running
    finally:
        for server in running.values():
            server.stop()


def cloud_answer(servers) -> str:
    reply = client(servers["cloud"]).chat.completions.create(model="cloud", messages=ASK, **GREEDY)
    return reply.choices[0].message.content


def test_compare_answers_with_local_as_choice_0_and_cloud_as_choice_1(servers) -> None:
    api = client(servers["compare"])
    model = api.models.list().data[0].id
    reply = api.chat.completions.create(model=model, messages=ASK, **GREEDY)
    route = reply.model_extra["slmforge_route"]
    assert route["policy"] == "compare" and route["sides"] == ["local", "cloud"]
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[1].message.content == cloud_answer(servers)
    assert reply.choices[0].message.content  # the same model locally: an answer too
    chunks = list(api.chat.completions.create(model=model, messages=ASK, stream=True, **GREEDY))
    assert chunks[0].model_extra["slmforge_route"]["sides"] == ["local", "cloud"]
    streamed = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == {0: reply.choices[0].message.content, 1: reply.choices[1].message.content}


def test_local_first_falls_back_to_the_cloud_when_the_filter_blocks_local(servers) -> None:
    api = client(servers["local-first"])
    model = api.models.list().data[0].id
    reply = api.chat.completions.create(model=model, messages=ASK, **GREEDY)
    route = reply.model_extra["slmforge_route"]
    assert route["sides"] == ["cloud"] and route["fallback"] is True
    assert route["reason"] == (
        "fell back to the cloud: the content filter blocked the answer (answers are blocked)"
    )
    assert reply.choices[0].message.content == cloud_answer(servers)
    # streamed, the client sees only the cloud's answer: the blocked local text never leaves
    chunks = list(api.chat.completions.create(model=model, messages=ASK, stream=True, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == cloud_answer(servers)


def test_routed_requests_refuse_what_routing_cannot_do(servers) -> None:
    api = client(servers["compare"])
    model = api.models.list().data[0].id
    with pytest.raises(openai.BadRequestError, match="With --route, n must be 1"):
        api.chat.completions.create(model=model, messages=ASK, n=2, **GREEDY)
