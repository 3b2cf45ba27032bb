"""The OpenAI-compatible server: FastAPI routes over one local engine and its adapters.

`create_app` wires the pieces: API keys and the body size limit (an ASGI middleware, so they
apply before anything else reads the request), OpenAI error objects for every failure, the
scheduler's bounded concurrency and queue, the content filter, and Prometheus metrics. The
model may still be loading when the app starts; until it is ready, model routes answer 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from slmforge import __version__
from slmforge.config.serve import ServeConfig
from slmforge.http import errors
from slmforge.http.auth import ApiKeys
from slmforge.http.errors import APIError
from slmforge.http.guard import OPEN_PATHS, Guard, GuardPolicy
from slmforge.safety.verdicts import ContentFilter, FilterVerdict, NoFilter
from slmforge.serve.metrics import ServerMetrics
from slmforge.serve.models import ServedModel
from slmforge.serve.scheduler import Scheduler


@dataclass
class ServerState:
    config: ServeConfig
    guard: GuardPolicy  # keys, body limit and the replica header, enforced by http.Guard
    content_filter: ContentFilter
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    served: ServedModel | None = None
    load_error: str | None = None
    scheduler: Scheduler | None = None
    router: Any = None  # routing.router.Router with --route: it answers chat requests

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
    state.metrics.watch_prefix_cache(lambda: _prefix_stats(state))

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


def _prefix_stats(state: ServerState) -> Any:
    cache = getattr(state.served.engine, "prefix_cache", None) if state.served else None
    return cache.stats if cache is not None else None
