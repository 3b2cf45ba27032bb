"""Continuous batching of the ONNX engine: requests decoded together give exactly what each
gives alone (greedy, seeded sampling, stop strings, adapters, log-probabilities, JSON mode),
through the engine and through the server with the official `openai` client. The one-request
path that drives onnxruntime directly gives what onnxruntime-genai's generator gives.

Batches are formed with `BatchScheduler.held()`: requests queue up while it is held and are
admitted together when it is released, so the tests do not depend on timing."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from slmforge.config.serve import ServeConfig
from slmforge.runtime import onnx_batch
from slmforge.runtime.engine import GenParams
from slmforge.runtime.onnx_engine import OnnxEngine
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

PROMPTS = [
    "What should I pack for a weekend in Lisbon?",
    "def read_config(path):",
    "The train to Porto leaves at",
    "Name three museums in Madrid.",
]
ADAPTERS = [None, "travel", "terse", None]
OPTIONS = [
    {"max_tokens": 24},
    {"max_tokens": 12, "temperature": 0.9, "seed": 7},
    {"max_tokens": 30, "stop": ["return"]},
    {"max_tokens": 16, "logprobs": True, "top_logprobs": 2},
]


@pytest.fixture(scope="module")
def engines(llama_onnx) -> Iterator[tuple[OnnxEngine, OnnxEngine]]:
    alone, batched = OnnxEngine(llama_onnx), OnnxEngine(llama_onnx, max_batch=4)
    assert alone.batcher is None and batched.batcher is not None
    yield alone, batched
    batched.batcher.close()


def run(engine: OnnxEngine, index: int, **extra) -> tuple:
    params = GenParams(**(OPTIONS[index] | extra))
    prompt = engine.encode(PROMPTS[index])
    deltas = list(engine.generate_ids(prompt, params, ADAPTERS[index]))
    logprobs = [(e.token_id, round(e.logprob, 4)) for d in deltas for e in d.logprobs or []]
    final = deltas[-1]
    return "".join(d.text for d in deltas), final.finish_reason, final.usage, logprobs


def test_direct_decoder_equals_onnxruntime_genai(engines, llama_onnx) -> None:
    alone, _ = engines
    genai = OnnxEngine(llama_onnx, decoder="genai")
    assert alone.direct is not None and genai.direct is None and genai.model is not None
    options = alone.direct.session.get_session_options()
    assert options.get_session_config_entry(onnx_batch.ALLOW_SPINNING) == "0"  # idle: sleep
    for index in range(4):
        text, finish, usage, logprobs = run(genai, index)
        expected = run(alone, index)
        assert (text, finish, usage) == expected[:3]
        assert [t for t, _ in logprobs] == [t for t, _ in expected[3]]
        assert [v for _, v in logprobs] == pytest.approx([v for _, v in expected[3]], abs=1e-3)
    ids = alone.encode(PROMPTS[0])
    for adapter in (None, "travel"):
        direct = [s.logprob for s in alone.score(ids, adapter)[1:]]
        assert direct == pytest.approx([s.logprob for s in genai.score(ids, adapter)[1:]], abs=1e-3)


def together(engine: OnnxEngine, work, count: int) -> list:
    """Run `work(i)` for i < count in threads, admitted to the batch at once."""
    with ThreadPoolExecutor(count) as pool, engine.batcher.held():
        futures = [pool.submit(work, i) for i in range(count)]
        assert engine.batcher.wait_for_pending(count, timeout=60)
    return [f.result(timeout=120) for f in futures]


def test_batched_requests_equal_each_request_alone(engines) -> None:
    alone, batched = engines
    expected = [run(alone, i) for i in range(4)]
    assert len({e[0] for e in expected}) == 4  # four different answers, so mixing would show
    assert together(batched, lambda i: run(batched, i), 4) == expected
    assert batched.batcher.peak_batch == 4
    assert [run(batched, i) for i in range(4)] == expected  # and a batch of one, too


def test_more_requests_than_the_batch_queue_and_finish(engines) -> None:
    alone, batched = engines
    expected = [run(alone, i % 4, max_tokens=8 + i) for i in range(6)]
    got = together(batched, lambda i: run(batched, i % 4, max_tokens=8 + i), 6)
    assert got == expected


def test_caches_that_grow_keep_what_they_hold(engines, llama_onnx, monkeypatch) -> None:
    """Tiny starting buffers make every cache grow while sequences decode, alone and in a
    batch (their tokens must move to the new buffers, and each step's kept bindings follow
    them); a batch wider than the first rows grows its rows while the first ones hold tokens."""
    alone, batched = engines
    expected = [run(alone, i) for i in range(4)]
    monkeypatch.setattr(onnx_batch, "CAPACITY_START", 4)
    assert [run(alone, i) for i in range(4)] == expected
    assert together(batched, lambda i: run(batched, i), 4) == expected
    wide = OnnxEngine(llama_onnx, max_batch=onnx_batch.ROWS_START + 2)
    try:
        count = onnx_batch.ROWS_START + 2
        assert together(wide, lambda i: run(wide, i % 4), count) == [
            expected[i % 4] for i in range(count)
        ]
        assert wide.batcher.peak_batch == count
    finally:
        wide.batcher.close()


def test_json_mode_and_cancelled_streams_in_a_batch(engines) -> None:
    alone, batched = engines
    params = GenParams(max_tokens=40, json_mode=True)
    prompt = alone.encode("Reply in JSON:")
    expected = "".join(d.text for d in alone.generate_ids(prompt, params))
    abandoned = batched.generate_ids(alone.encode(PROMPTS[0]), GenParams(max_tokens=500))
    next(abandoned)
    abandoned.close()  # a client that went away: its sequence leaves the batch
    got = "".join(d.text for d in batched.generate_ids(prompt, params))
    assert got == expected
    assert batched.batcher.model.groups == {}  # every cache row was given back


@pytest.fixture(scope="module")
def server(llama_onnx) -> Iterator[RunningServer]:
    running = start_in_thread(ServeConfig(model=str(llama_onnx), port=0, max_concurrency=4))
    yield running
    running.stop()


def stream_chat(server: RunningServer, index: int) -> tuple:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    model = ADAPTERS[index] or server.server.state.served.name
    options = {k: v for k, v in OPTIONS[index].items() if k not in ("logprobs", "top_logprobs")}
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPTS[index]}],
            temperature=options.pop("temperature", 0),
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return text, finish, chunks[-1].usage.completion_tokens


def test_server_streams_batched_requests_like_single_ones(server) -> None:
    engine = server.server.state.served.engine
    alone = [stream_chat(server, i) for i in range(4)]
    assert together(engine, lambda i: stream_chat(server, i), 4) == alone
    assert engine.batcher.peak_batch == 4
    assert all(text for text, _, _ in alone)
