"""The web app's HTTP side: the static page and a small JSON/SSE API over a `Router`.

```
GET  /                the page (app/web/index.html; its script and styles under /static/)
GET  /api/config      the two models' names, the local adapters, policies and defaults
POST /api/chat        one question, answered as server-sent events (see below)
POST /api/compare     similarity of two answers, and the judge's preference when configured
GET  /health          200 once the app serves
```

`/api/chat` streams `data: {json}` lines: `{"type": "decision", ...Decision}` first (and again
on a fallback), `{"type": "delta", "side", "text", "t", "n"}` per piece of text (`t` seconds
since the request arrived, `n` pieces so far on that side), `{"type": "done", "side",
"finish_reason", "usage", "timings"}` when a side ends, `{"type": "error", "side", "message"}`,
and `{"type": "end"}`. Nothing the page receives holds an API key: engine names carry URLs
without credentials and remote errors are redacted by `RemoteEngine`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field

from slmforge import __version__
from slmforge.app.scoring import PairJudge, similarity_or_reason
from slmforge.config import StrictModel
from slmforge.config.app import POLICIES, Policy, RouteSettings
from slmforge.errors import InputError
from slmforge.http.streams import iterate_in_thread
from slmforge.routing.router import Decision, Event, Part, Router
from slmforge.runtime.engine import GenParams

STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass
class AppState:
    router: Router
    local_name: str
    cloud_name: str
    default_adapter: str | None
    policy: Policy
    judge: PairJudge | None = None


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls (OpenAI's shape)
    tool_call_id: str | None = None  # the call a tool message answers


class ChatRequest(StrictModel):
    messages: list[ChatMessage] = Field(min_length=1)
    cloud_messages: list[ChatMessage] | None = None  # compare: the cloud pane's own thread
    policy: Policy = "compare"
    adapter: str | None = None  # None or "": the base model
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(256, ge=1, le=4096)
    top_p: float = Field(1.0, gt=0, le=1)
    ttft_timeout_ms: float | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    # passed through to both sides, as the OpenAI API takes them
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    response_format: dict[str, Any] | None = None

    def params(self) -> GenParams:
        fmt = self.response_format or {}
        return GenParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            tools=self.tools,
            tool_choice=self.tool_choice,
            json_mode=fmt.get("type") == "json_object",
            json_schema=fmt.get("json_schema") if fmt.get("type") == "json_schema" else None,
        )


class CompareRequest(StrictModel):
    question: str
    local: str
    cloud: str


def _web_file(name: str) -> bytes | None:
    folder = resources.files("slmforge.app") / "web"
    names = {item.name for item in folder.iterdir()}
    return (folder / name).read_bytes() if name in names else None


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class _Stream:
    """Turns router events into the page's JSON events, with arrival times and counts."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.pieces: dict[str, int] = {}

    def encode(self, event: Event) -> dict[str, Any] | None:
        t = round(time.perf_counter() - self.start, 4)
        if isinstance(event, Decision):
            return {"type": "decision", "t": t, **event.to_dict()}
        return self._part(event, t)

    def _part(self, part: Part, t: float) -> dict[str, Any] | None:
        if part.error is not None:
            return {"type": "error", "side": part.side, "message": part.error, "t": t}
        delta = part.delta
        if delta is None:
            return None
        if delta.finish_reason is not None or delta.timings is not None:
            return {
                "type": "done",
                "side": part.side,
                "t": t,
                "finish_reason": delta.finish_reason,
                "usage": asdict(delta.usage) if delta.usage else None,
                "timings": asdict(delta.timings) if delta.timings else None,
            }
        if delta.tool_calls:
            calls = [asdict(call) for call in delta.tool_calls]
            return {"type": "tool_calls", "side": part.side, "calls": calls, "t": t}
        if not delta.text:
            return None
        self.pieces[part.side] = self.pieces.get(part.side, 0) + 1
        return {
            "type": "delta",
            "side": part.side,
            "text": delta.text,
            "t": t,
            "n": self.pieces[part.side],
        }


async def _events(events: Iterator[Event]) -> AsyncIterator[str]:
    stream = _Stream()
    try:
        async for event in iterate_in_thread(lambda: events):
            encoded = stream.encode(event)
            if encoded is not None:
                yield _sse(encoded)
    except Exception as exc:  # reported in the stream: its status line is already sent
        yield _sse({"type": "error", "side": None, "message": str(exc) or type(exc).__name__})
    yield _sse({"type": "end"})


def _settings(base: RouteSettings, body: ChatRequest) -> RouteSettings:
    update: dict[str, Any] = {}
    if body.ttft_timeout_ms is not None:
        update["ttft_timeout_s"] = body.ttft_timeout_ms / 1000
    if body.timeout_s is not None:
        update["timeout_s"] = body.timeout_s
    return base.model_copy(update=update)


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="slmforge app", version=__version__, docs_url=None, redoc_url=None)
    app.state.slmforge = state

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(_web_file("index.html") or b"")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        content = _web_file(name)
        kind = STATIC_TYPES.get(name[name.rfind(".") :]) if "." in name else None
        if content is None or kind is None:
            return JSONResponse({"error": f"no such file: {name}"}, status_code=404)
        return Response(content, media_type=kind)

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        router = state.router
        return {
            "local": {
                "name": state.local_name,
                "adapters": router.local.adapters(),
                "adapter": state.default_adapter,
            },
            "cloud": {"name": state.cloud_name},
            "policies": list(POLICIES),
            "policy": state.policy,
            "judge": state.judge is not None,
            "settings": router.settings.model_dump(),
        }

    @app.post("/api/chat")
    async def chat(body: ChatRequest) -> Response:
        cloud = body.cloud_messages
        try:
            params = body.params()
            events = state.router.chat(
                [m.model_dump(exclude_none=True) for m in body.messages],
                params,
                policy=body.policy,
                adapter=body.adapter or None,
                settings=_settings(state.router.settings, body),
                cloud_messages=[m.model_dump(exclude_none=True) for m in cloud] if cloud else None,
            )
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(
            _events(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/api/compare")
    async def compare(body: CompareRequest) -> dict[str, Any]:
        score, why = await asyncio.to_thread(similarity_or_reason, body.local, body.cloud)
        result: dict[str, Any] = {"similarity": score, "similarity_error": why, "judge": None}
        if state.judge is not None:
            answers = {"local": body.local, "cloud": body.cloud}
            preference = await asyncio.to_thread(state.judge.prefer, body.question, answers)
            result["judge"] = preference.to_dict()
        return result

    return app
