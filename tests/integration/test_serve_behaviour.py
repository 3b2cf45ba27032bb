"""Server behaviour under load and failure: queue limits, disconnects, loading, body limits,
the content filter hook, and bad requests that must never become a 500."""

from __future__ import annotations

import concurrent.futures
import io
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmforge import progress
from slmforge.config.serve import ServeConfig
from slmforge.safety.verdicts import FilterVerdict
from slmforge.serve.models import load_served
from slmforge.serve.server import RunningServer, Server, start_in_thread

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Tell me about trains."}]


class CountingEngine:
    """Wraps an engine to see how many deltas a generation produced and whether it was closed
    (the server must stop generating when the client goes away)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.produced = 0
        self.closed = threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_ids(self, prompt, params, adapter=None):
        def counted():
            try:
                for delta in self.engine.generate_ids(prompt, params, adapter):
                    self.produced += 1
                    yield delta
            finally:
                self.closed.set()

        return counted()


@pytest.fixture(scope="module")
def served(tiny_llama):
    return load_served(str(tiny_llama))


def _start(served, **options) -> RunningServer:
    return start_in_thread(ServeConfig(model=served.engine.source, port=0, **options), served)


def _wait(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class GatedEngine:
    """Wraps an engine so a generation waits for `release` before its first token: the test
    decides how long a request holds its slot."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_ids(self, prompt, params, adapter=None):
        def gated():
            assert self.release.wait(60)
            yield from self.engine.generate_ids(prompt, params, adapter)

        return gated()


def test_full_queue_is_429_with_retry_after(served) -> None:
    gated = GatedEngine(served.engine)
    original, served.engine = served.engine, gated
    running = _start(served, max_concurrency=1, max_queue=0)
    try:
        state = running.server.state
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holder = pool.submit(
                client.chat.completions.create, model=served.name, messages=ASK, max_tokens=2
            )
            assert _wait(lambda: state.scheduler.running == 1)
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model=served.name, messages=ASK, max_tokens=2)
            assert caught.value.response.headers["retry-after"] == "1"
            gated.release.set()
            assert holder.result(60).choices[0].message.content is not None
        assert _wait(lambda: state.scheduler.running == 0)
        metrics = httpx.get(f"{running.url}/metrics").text
        assert (
            'slmforge_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in metrics
        )
    finally:
        gated.release.set()
        served.engine = original
        running.stop()


def test_client_disconnect_stops_the_generation(served) -> None:
    counting = CountingEngine(served.engine)
    original, served.engine = served.engine, counting
    running = _start(served)
    try:
        url = f"{running.url}/v1/chat/completions"
        body = {
            "model": served.name,
            "messages": ASK,
            "max_tokens": 500,
            "stream": True,
            "temperature": 0,
            "stop": ["\u2603"],
        }
        with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as response:
            lines = response.iter_lines()
            for _ in range(4):
                next(lines)
        assert counting.closed.wait(30), "the generation went on after the client left"
        assert counting.produced < 400
        assert _wait(lambda: running.server.state.scheduler.running == 0)
        # the engine is free again: the next request is answered
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        assert client.chat.completions.create(model=served.name, messages=ASK, max_tokens=2)
    finally:
        served.engine = original
        running.stop()


class FailingEngine:
    """Wraps an engine so a generation fails after its first delta (a stream that has already
    sent its status line and first chunks when the failure comes)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_ids(self, prompt, params, adapter=None):
        def failing():
            for delta in self.engine.generate_ids(prompt, params, adapter):
                yield delta
                raise RuntimeError("the device went away")

        return failing()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_failure_mid_stream_is_an_error_event_and_is_logged(served, path) -> None:
    original, served.engine = served.engine, FailingEngine(served.engine)
    log = io.StringIO()
    progress.configure("json", stream=log)
    running = _start(served)
    try:
        body = {"model": served.name, "max_tokens": 20, "stream": True, "temperature": 0}
        body |= {"messages": ASK} if "chat" in path else {"prompt": "Trains are"}
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", f"{running.url}{path}", json=body) as response,
        ):
            events = [line for line in response.iter_lines() if line]
        assert response.status_code == 200
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "while generating" in error["message"]
        logged = [json.loads(line) for line in log.getvalue().splitlines()]
        warnings = [e["message"] for e in logged if e.get("level") == "warning"]
        assert warnings == [
            f"internal error while streaming {path}: RuntimeError: the device went away"
        ]
    finally:
        progress.configure("plain")
        served.engine = original
        running.stop()


def test_model_routes_are_503_while_loading(tiny_llama, monkeypatch) -> None:
    release = threading.Event()
    import slmforge.serve.server as server_module

    def slow_load(*args, **kwargs):
        release.wait(60)
        return load_served(*args, **kwargs)

    monkeypatch.setattr(server_module, "load_served", slow_load)
    server = Server(ServeConfig(model=str(tiny_llama), port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert _wait(lambda: _status(f"{server.url}/health") == 503)
        response = httpx.post(
            f"{server.url}/v1/chat/completions", json={"model": "x", "messages": ASK}
        )
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.json()["error"]["type"] == "server_error"
        release.set()
        assert _wait(lambda: _status(f"{server.url}/health") == 200, timeout=120)
    finally:
        release.set()
        server.stop()
        thread.join(30)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_body_over_the_limit_is_413(served) -> None:
    running = _start(served, max_body_bytes=2048)
    try:
        big = {"model": served.name, "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx.post(f"{running.url}/v1/chat/completions", json=big)
        assert response.status_code == 413
        # without a Content-Length (chunked), the limit holds as the bytes arrive
        chunks = iter(
            [b'{"model": "m", "messages": [{"role": "user", "content": "', b"y" * 4096, b'"}]}']
        )
        response = httpx.post(f"{running.url}/v1/chat/completions", content=chunks)
        assert response.status_code == 413
    finally:
        running.stop()


class WordFilter:
    """A stand-in for the safety stage's filters: blocks one word in and one word out."""

    name = "words"

    def check_input(self, messages):
        text = " ".join(m["content"] for m in messages)
        return FilterVerdict(blocked="forbidden" in text, reason="blocked word")

    def check_output(self, text):
        return FilterVerdict(blocked=" the" in text, reason="blocked word")


def test_content_filter_blocks_input_and_output(served) -> None:
    running = start_in_thread(
        ServeConfig(model=served.engine.source, port=0), served, content_filter=WordFilter()
    )
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=served.name, messages=[{"role": "user", "content": "a forbidden thing"}]
            )
        assert caught.value.body["code"] == "content_filter"
        reply = client.chat.completions.create(
            model=served.name, messages=ASK, max_tokens=60, temperature=0
        )
        assert reply.choices[0].finish_reason == "content_filter"
        assert " the" not in reply.choices[0].message.content
        stream = client.chat.completions.create(
            model=served.name, messages=ASK, max_tokens=60, temperature=0, stream=True
        )
        chunks = [c for c in stream if c.choices]
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert " the" not in "".join(c.choices[0].delta.content or "" for c in chunks)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def fuzz_server(served) -> Iterator[RunningServer]:
    running = _start(served, max_tokens_cap=4)
    yield running
    running.stop()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CHAT_FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stream_options",
    "max_completion_tokens",
    "tools",
    "user",
]
COMPLETION_FIELDS = [
    "model",
    "prompt",
    "max_tokens",
    "echo",
    "logprobs",
    "best_of",
    "suffix",
    "n",
    "stop",
    "stream",
]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/models",
            "/v1/models/x",
            "/health",
            "/nope",
        ]
    ),
    body=st.one_of(
        st.dictionaries(st.sampled_from(CHAT_FIELDS), json_values, max_size=6),
        st.dictionaries(st.sampled_from(COMPLETION_FIELDS), json_values, max_size=6),
        json_values,
        st.binary(max_size=40),
    ),
)
def test_fuzzed_requests_never_get_a_500(fuzz_server, served, path, body) -> None:
    """Random bodies, right and wrong, for every endpoint: each answer is a proper status with
    an OpenAI error object or a valid response, and the server keeps serving."""
    if isinstance(body, dict) and "model" in body and isinstance(body["model"], str):
        body["model"] = served.name  # reach past the 404 check more often
    if isinstance(body, bytes):
        response = httpx.post(f"{fuzz_server.url}{path}", content=body, timeout=60)
    else:
        response = httpx.post(f"{fuzz_server.url}{path}", json=body, timeout=60)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    assert httpx.get(f"{fuzz_server.url}/health").status_code == 200
