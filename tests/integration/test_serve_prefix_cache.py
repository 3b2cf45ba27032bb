"""The prefix cache behind a real server: a shared system prompt is prefilled once, later
requests read it from the cache (counted in /metrics), answers are those of a server without
the cache, and an adapter never reads what the base (or another adapter) computed."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from slmforge.config.serve import ServeConfig
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

SYSTEM = "You are a travel assistant. Answer in one short sentence, name one place. " * 4
QUESTIONS = ["Where to eat in Porto?", "What to see in Kyoto?", "Best beach near Lisbon?"]


def metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def shared_blocks(server: RunningServer) -> int:
    """Full cache blocks every question's prompt shares (the system prompt's, roughly)."""
    engine = server.server.state.served.engine
    keys = [
        engine.prefix_cache.keys(None, engine.prompt_ids(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]))
        for q in QUESTIONS
    ]  # fmt: skip
    shared = 0
    for column in zip(*keys, strict=False):  # prompts of different lengths: the shortest ends it
        if len(set(column)) > 1:
            break
        shared += 1
    return shared


def answers(server: RunningServer, model: str | None = None) -> list[str]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    name = model or server.server.state.served.name
    return [
        client.chat.completions.create(
            model=name, max_tokens=12, temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
        ).choices[0].message.content
        for q in QUESTIONS
    ]  # fmt: skip


@pytest.fixture(scope="module", params=["torch", "onnx", "onnx-batched"])
def servers(request, tiny_llama, llama_adapters, llama_onnx) -> Iterator[tuple]:
    if request.param == "torch":
        adapters = [f"{name}={path}" for name, path in llama_adapters.items()]
        options = dict(model=str(tiny_llama), adapter=adapters)
    else:
        options = dict(
            model=str(llama_onnx), max_concurrency=4 if "batched" in request.param else 1
        )
    cached = start_in_thread(ServeConfig(port=0, **options))
    plain = start_in_thread(ServeConfig(port=0, prefix_cache_mib=0, **options))
    yield cached, plain
    cached.stop()
    plain.stop()


def test_shared_prompts_are_prefilled_once_and_answers_do_not_change(servers) -> None:
    cached, plain = servers
    assert answers(cached) == answers(plain)
    hits = metric(cached, "slmforge_prefix_cache_hits_total")
    misses = metric(cached, "slmforge_prefix_cache_misses_total")
    reused = metric(cached, "slmforge_prefix_cache_reused_tokens_total")
    # the system prompt's blocks are computed for the first question and read for the others
    shared = shared_blocks(cached)
    assert shared >= 3
    assert hits == 2 * shared and misses > shared and reused == hits * 16
    assert metric(cached, "slmforge_prefix_cache_bytes") > 0
    assert metric(plain, "slmforge_prefix_cache_hits_total") == 0


def test_an_adapter_never_reads_what_the_base_computed(servers) -> None:
    cached, plain = servers
    adapters = cached.server.state.served.engine.adapters()
    if not adapters:
        pytest.skip("this build serves no adapters")
    answers(cached)  # the base's blocks are in the cache now
    before = metric(cached, "slmforge_prefix_cache_hits_total")
    assert answers(cached, adapters[0]) == answers(plain, adapters[0])
    # the adapter's first question found nothing; its second and third read its own blocks
    assert metric(cached, "slmforge_prefix_cache_hits_total") - before == 2 * shared_blocks(cached)
