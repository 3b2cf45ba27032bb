"""Running choices for the chat and text completion endpoints, streamed or collected.

Everything here is asyncio on top of the engines' blocking token streams
(`scheduler.iterate_in_thread`), so the event loop keeps serving health checks, metrics and
other clients while a model generates. The content filter sees every answer: with a filter
active, streamed text is held back until the filter has passed it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from slmforge.http.streams import iterate_in_thread
from slmforge.runtime.engine import Delta, GenParams, ToolCall, Usage
from slmforge.safety.verdicts import NoFilter
from slmforge.serve.metrics import ServerMetrics

# With a content filter, text is released in pieces of at least this many characters.
FILTER_CHUNK_CHARS = 80


@dataclass
class ChoiceResult:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    logprobs: list[Any] = field(default_factory=list)  # sampling.TokenLogprob
    tool_calls: list[ToolCall] = field(default_factory=list)


def choice_params(params: GenParams, index: int) -> GenParams:
    """Choice `index` of `n`: a different seed per choice, so n > 1 gives n samples that a seed
    still reproduces."""
    if params.seed is None or index == 0:
        return params
    return params.model_copy(update={"seed": params.seed + index})


async def engine_deltas(
    engine: Any, prompt: list[int], params: GenParams, adapter: str | None
) -> AsyncIterator[Delta]:
    # closing the stream on exit stops the generation now, not when it is collected
    async with aclosing(
        iterate_in_thread(lambda: engine.generate_ids(prompt, params, adapter))
    ) as stream:
        async for delta in stream:
            yield delta


def _merge(deltas: list[Delta]) -> Delta:
    logprobs = [entry for d in deltas for entry in (d.logprobs or [])]
    calls = [call for d in deltas for call in (d.tool_calls or [])]
    text = "".join(d.text for d in deltas)
    return Delta(text=text, logprobs=logprobs or None, tool_calls=calls or None)


async def screened(
    deltas: AsyncGenerator[Delta, None],
    content_filter: Any,
    on_verdict: Callable[[Any], None] | None = None,
) -> AsyncIterator[Delta]:
    """Pass deltas through the output filter; a blocked answer ends with finish_reason
    `content_filter` and none of the blocked text. `on_verdict` sees each window's verdict.
    The engine's stream is closed as soon as this one ends, so a blocked answer stops its
    generation before the response is finished, not whenever the generator is collected."""
    async with aclosing(deltas), aclosing(_screened(deltas, content_filter, on_verdict)) as inner:
        async for delta in inner:
            yield delta


async def _screened(
    deltas: AsyncIterator[Delta],
    content_filter: Any,
    on_verdict: Callable[[Any], None] | None,
) -> AsyncIterator[Delta]:
    if isinstance(content_filter, NoFilter):
        async for delta in deltas:
            yield delta
        return
    released, held = "", []
    async for delta in deltas:
        final = delta.finish_reason is not None
        if not final:
            held.append(delta)
            if sum(len(d.text) for d in held) < FILTER_CHUNK_CHARS:
                continue
        piece = _merge(held)
        verdict = content_filter.check_output(released + piece.text)
        if on_verdict is not None:
            on_verdict(verdict)
        if verdict.blocked:
            yield Delta(finish_reason="content_filter", usage=delta.usage if final else None)
            return
        if piece.text or piece.logprobs or piece.tool_calls:
            yield piece
        released, held = released + piece.text, []
        if final:
            yield delta
            return


class Recorder:
    """Metrics of one request: time to first token, latency, tokens in and out."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, model: str) -> None:
        self.metrics = metrics
        self.labels = (endpoint, model)
        self.start = time.perf_counter()
        self.first_token: float | None = None

    def saw(self, delta: Delta) -> None:
        if delta.text and self.first_token is None:
            self.first_token = time.perf_counter()
            self.metrics.ttft.labels(*self.labels).observe(self.first_token - self.start)
        if delta.usage is not None:
            self.metrics.completion_tokens.labels(*self.labels).inc(delta.usage.completion_tokens)

    def prompt(self, tokens: int) -> None:
        self.metrics.prompt_tokens.labels(*self.labels).inc(tokens)

    def done(self) -> None:
        self.metrics.latency.labels(*self.labels).observe(time.perf_counter() - self.start)


async def collect(deltas: AsyncIterator[Delta], recorder: Recorder) -> ChoiceResult:
    result = ChoiceResult()
    parts = []
    async for delta in deltas:
        recorder.saw(delta)
        parts.append(delta.text)
        result.logprobs.extend(delta.logprobs or [])
        result.tool_calls.extend(delta.tool_calls or [])
        if delta.finish_reason is not None:
            result.finish_reason = delta.finish_reason
            result.usage = delta.usage or Usage()
    result.text = "".join(parts)
    return result
