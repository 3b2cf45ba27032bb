"""What every endpoint's request handling shares, like vLLM's `serving_engine.py`.

A request takes a generation slot (or a 429), then either streams its events, with `[DONE]`
last and a failure after the first byte sent as an error event (and logged: the client's
status line said 200), or answers one object while watching for the client going away.
`Annotations` adds Azure-style content filter results when a filter is configured.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse

from slmforge.errors import InputError
from slmforge.http.errors import APIError
from slmforge.progress import warn
from slmforge.runtime.engine import Delta, Usage
from slmforge.safety.verdicts import FilterVerdict
from slmforge.serve.app import ServerState
from slmforge.serve.generation import Recorder, screened
from slmforge.serve.protocol import PromptFilterResult, UsageInfo
from slmforge.serve.protocol_base import OpenAIObject
from slmforge.serve.scheduler import QueueFull, Scheduler

DISCONNECT_POLL_S = 0.25


def sse(obj: OpenAIObject | dict[str, Any] | str) -> str:
    if isinstance(obj, OpenAIObject):
        obj = obj.model_dump()
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


class Run(Protocol):
    """One request's generation: the whole answer, or its stream's events without `[DONE]`."""

    recorder: Recorder

    def whole(self) -> Awaitable[OpenAIObject]: ...

    def events(self) -> AsyncIterator[str]: ...


async def respond(state: ServerState, request: Request, stream: bool, run: Run) -> Any:
    """Take a slot, then stream `run`'s events or answer its whole response."""
    slot = await admitted(state)
    if stream:
        events = finished_stream(run.events(), run.recorder, request.url.path)
        return ReleasingStreamingResponse(events, slot)
    async with slot:
        response = await until_disconnect(request, run.whole())
    return response.model_dump()


class Chunks:
    """The chunks of one stream: they share the response's head and, with `include_usage`,
    all carry `usage` (null until the last chunk, as OpenAI sends it)."""

    def __init__(self, model: type[OpenAIObject], head: dict[str, Any], include_usage: bool):
        self.model, self.head, self.include_usage = model, head, include_usage

    def chunk(self, choices: list[Any], **fields: Any) -> str:
        usage = {"usage": None} if self.include_usage else {}
        return sse(self.model(**self.head, choices=choices, **usage, **fields))

    def usage(self, usage: Usage) -> list[str]:
        """The closing chunk with the usage, when the client asked for it."""
        if not self.include_usage:
            return []
        return [sse(self.model(**self.head, choices=[], usage=UsageInfo.of(usage)))]


async def finished_stream(
    events: AsyncIterator[str], recorder: Recorder, path: str
) -> AsyncIterator[str]:
    """A stream's events, then `[DONE]`; an error after the stream started is reported in the
    stream as an OpenAI error object (the status line has already been sent)."""
    try:
        async for event in events:
            yield event
    except APIError as exc:
        yield sse(exc.body())
    except InputError as exc:
        yield sse(bad_request(exc, None).body())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # logged like an unexpected error of a whole response (http.errors): the client only
        # sees a generic error event, so this line is the only trace of what went wrong
        warn(f"internal error while streaming {path}: {type(exc).__name__}: {exc}")
        yield sse(APIError(500, "The server had an error while generating.").body())
    recorder.done()
    yield sse("[DONE]")


class Annotations:
    """Azure OpenAI's filter annotations: `prompt_filter_results` on the response and
    `content_filter_results` on each choice; nothing at all when no filter is configured."""

    def __init__(self, state: ServerState, prompt_verdicts: list[FilterVerdict]) -> None:
        self.state = state
        self.prompt: dict[str, Any] = {}
        if state.annotates:
            results = [
                PromptFilterResult(prompt_index=i, content_filter_results=v.results)
                for i, v in enumerate(prompt_verdicts)
            ]
            self.prompt = {"prompt_filter_results": results}
        self.outputs: dict[int, FilterVerdict] = {}

    def screen(self, deltas: AsyncIterator[Delta], index: int) -> AsyncIterator[Delta]:
        def seen(verdict: FilterVerdict) -> None:
            self.outputs[index] = verdict
            if verdict.blocked:
                self.state.metrics.count_filtered("output", verdict.results)

        return screened(deltas, self.state.content_filter, seen)  # type: ignore[arg-type]

    def choice(self, index: int) -> dict[str, Any]:
        if not self.state.annotates:
            return {}
        verdict = self.outputs.get(index)
        return {"content_filter_results": verdict.results if verdict is not None else {}}

    def first_chunk(self, chunks: Chunks) -> list[str]:
        """Streams open with a chunk without choices that holds the prompt's results."""
        return [chunks.chunk([], **self.prompt)] if self.prompt else []


class ReleasingStreamingResponse(StreamingResponse):
    """A streaming response that releases its scheduler slot however the stream ends
    (finished, failed, or the client went away before the first byte)."""

    def __init__(self, content: AsyncIterator[str], release: AsyncExitStack) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release.aclose()


async def admitted(state: ServerState) -> AsyncExitStack:
    """Take a generation slot, or answer 429 when the queue is full."""
    stack = AsyncExitStack()
    if state.scheduler is None:  # an app driven without its lifespan (e.g. a test client)
        state.scheduler = Scheduler(
            state.config.max_concurrency, state.config.max_queue, lambda: None
        )
    try:
        await stack.enter_async_context(state.scheduler.slot())
    except QueueFull:
        raise APIError(
            429,
            "Too many requests are waiting; retry shortly.",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        ) from None
    return stack


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (and so the generation) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise APIError(499, "client closed the request")
    finally:
        if not task.done():
            task.cancel()


def bad_request(exc: InputError, param: str | None) -> APIError:
    return APIError(400, str(exc), param=param, code="invalid_value")


def context_error(exc: Exception, param: str) -> APIError:
    """A prompt that leaves no room to generate (`ContextLengthError`): 400 with OpenAI's code,
    so the official client raises `BadRequestError` as it does against OpenAI or vLLM."""
    return APIError(400, str(exc), param=param, code="context_length_exceeded")
