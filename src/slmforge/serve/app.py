"""The OpenAI-compatible server: FastAPI routes over one local engine and its adapters.

`create_app` wires the pieces: API keys and the body size limit (an ASGI middleware, so they
apply before anything else reads the request), OpenAI error objects for every failure, the
scheduler's bounded concurrency and queue, the content filter, and Prometheus metrics. The
model may still be loading when the app starts; until it is ready, model routes answer 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from slmforge import __version__
from slmforge.config.serve import ServeConfig
from slmforge.errors import InputError
from slmforge.http import errors
from slmforge.http.auth import ApiKeys
from slmforge.http.errors import APIError
from slmforge.http.guard import OPEN_PATHS, Guard, GuardPolicy
from slmforge.runtime.engine import GenParams
from slmforge.runtime.local import ContextLengthError
from slmforge.serve.filters import ContentFilter, FilterVerdict, NoFilter
from slmforge.serve.metrics import ServerMetrics
from slmforge.serve.models import ServedModel
from slmforge.serve.scheduler import QueueFull, Scheduler

DISCONNECT_POLL_S = 0.25


@dataclass
class ServerState:
    config: ServeConfig
    guard: GuardPolicy  # keys, body limit and the replica header, enforced by http.Guard
    content_filter: ContentFilter
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    served: ServedModel | None = None
    load_error: str | None = None
    scheduler: Scheduler | None = None
    router: Any = None  # app.router.Router with --route: it answers chat requests

    def ready(self) -> ServedModel:
        if self.served is None:
            status = "failed to load" if self.load_error else "still loading"
            raise APIError(
                503, f"The model is {status}; try again shortly.", headers={"Retry-After": "5"}
            )
        return self.served

    def adapter_for(self, model: str) -> str | None:
        served = self.ready()
        try:
            return served.resolve(model)
        except KeyError:
            known = ", ".join(served.model_ids())
            raise APIError(
                404,
                f"The model `{model}` does not exist on this server (available: {known}).",
                param="model",
                code="model_not_found",
            ) from None

    @property
    def annotates(self) -> bool:
        """Responses carry Azure-style filter results only when a filter is configured."""
        return not isinstance(self.content_filter, NoFilter)

    def check_input(self, messages: list[dict[str, str]]) -> FilterVerdict:
        verdict = self.content_filter.check_input(messages)
        self.metrics.count_filtered("input", verdict.results)
        if verdict.blocked:
            raise APIError(
                400,
                "The prompt was blocked by the content filter"
                + (f": {verdict.reason}" if verdict.reason else "."),
                param="messages",
                code="content_filter",
            )
        return verdict

    def prompt_filter_results(self, verdicts: list[FilterVerdict]) -> dict[str, Any]:
        if not self.annotates:
            return {}
        return {
            "prompt_filter_results": [
                {"prompt_index": i, "content_filter_results": v.results}
                for i, v in enumerate(verdicts)
            ]
        }

    def max_tokens(self, requested: int | None, param: str) -> int:
        cap = self.config.max_tokens_cap
        if requested is not None and requested > cap:
            raise APIError(
                400,
                f"{param} is too large: {requested}; this server allows at most {cap}.",
                param=param,
                code="invalid_value",
            )
        return requested if requested is not None else cap


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


def context_error(exc: ContextLengthError) -> APIError:
    return APIError(413, str(exc), param="messages", code="context_length_exceeded")


def sampling_params(body: Any, max_tokens: int, **extra: Any) -> GenParams:
    top_p = body.top_p if body.top_p is not None else 1.0
    temperature = body.temperature if body.temperature is not None else 1.0
    if top_p == 0:  # nucleus of probability 0 = the top token only
        temperature = 0.0
    return GenParams(
        max_tokens=max(max_tokens, 1),
        temperature=temperature,
        top_p=max(top_p, 1e-6),
        seed=body.seed,
        top_k=max(body.top_k or 0, 0),
        stop=body.stop_list(),
        **extra,
    )


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


def create_app(
    config: ServeConfig,
    keys: ApiKeys | None = None,
    served: ServedModel | None = None,
    content_filter: ContentFilter | None = None,
) -> FastAPI:
    if content_filter is None and config.safety is not None:
        from slmforge.safety.filter import SafetyFilter

        content_filter = SafetyFilter.from_file(config.safety)
    guard = GuardPolicy(keys or ApiKeys([]), config.max_body_bytes, OPEN_PATHS)
    state = ServerState(config, guard, content_filter or NoFilter())
    guard.count = state.metrics.count
    state.served = served

    def queue_gauges() -> None:
        if state.scheduler is not None:
            state.metrics.queue_depth.set(state.scheduler.waiting)
            state.metrics.running.set(state.scheduler.running)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # made here so its semaphore belongs to the server's event loop
        state.scheduler = Scheduler(config.max_concurrency, config.max_queue, queue_gauges)
        yield

    app = FastAPI(
        title="slmforge", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.slmforge = state
    errors.install(app)
    app.add_middleware(Guard, policy=guard)

    from slmforge.serve.routes import add_routes

    add_routes(app, state)
    return app


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


def bad_request(exc: InputError, param: str) -> APIError:
    return APIError(400, str(exc), param=param, code="invalid_value")
