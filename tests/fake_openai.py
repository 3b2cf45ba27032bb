"""A fake OpenAI-compatible HTTP server: a test double standing in for a remote cloud model.

Tests cannot reach a cloud service (there is no network here, and a real one would be slow,
costly and not repeatable), so this small FastAPI app answers `POST /v1/chat/completions`
(streaming SSE in the exact OpenAI chunk format, including the usage chunk asked for with
`stream_options.include_usage`, and non-streaming) and `GET /v1/models` on 127.0.0.1 on a free
port, in a background thread. It is a test double, not the project's server (`slmforge.serve`).

Behaviour is scripted per request:

```
with FakeOpenAI(api_key="sk-test") as fake:
    fake.script("hello there", Reply.failure(429, retry_after=1), "after the retry")
    fake.responder = lambda body: f"echo {body['messages'][-1]['content']}"
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
    ...
    assert fake.requests[0].body["model"] == "teacher"
```

Scripted replies are used first, in order; then `responder(body)` if set; then `default_text`.
Tokens are whitespace-separated words, so `max_tokens` and usage counts are predictable.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

_START_TIMEOUT_S = 10.0


@dataclass
class Reply:
    """One scripted answer: text, or an injected failure."""

    text: str = ""
    finish_reason: str | None = None  # None: "length" when cut by max_tokens, else "stop"
    status: int = 200  # an HTTP error status (429, 500, 503, ...) to fail with
    retry_after: float | None = None  # sent as a Retry-After header with a failure
    malformed: bool = False  # 200 with a body that is not valid JSON
    fail_after_chunks: int | None = None  # stream this many text chunks, then an error event
    usage: bool = True  # send the usage chunk when the client asked for it

    @classmethod
    def failure(cls, status: int, retry_after: float | None = None) -> Reply:
        return cls(status=status, retry_after=retry_after)

    @classmethod
    def garbled(cls) -> Reply:
        return cls(malformed=True)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


Responder = Callable[[dict[str, Any]], "str | Reply"]


def _words(text: str) -> list[str]:
    """Tokens as the fake counts them: each word with its trailing whitespace."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


class FakeOpenAI:
    """The fake server; use as a context manager (starts on enter, stops on exit)."""

    def __init__(
        self,
        api_key: str | None = None,
        models: tuple[str, ...] = ("fake-model",),
        default_text: str = "This is the fake model speaking.",
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.default_text = default_text
        self.responder: Responder | None = None
        self.requests: list[RecordedRequest] = []
        self._script: deque[str | Reply] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app = self._build_app()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: str | Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        """Forget scripted replies, the responder and recorded requests (between tests)."""
        with self._lock:
            self._script.clear()
        self.responder = None
        self.requests.clear()

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FakeOpenAI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # log_config=None: uvicorn would otherwise reconfigure logging for the whole test process,
        # closing handlers other libraries hold (absl's closes its stream if sys.stderr moved)
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", access_log=False, log_config=None
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_START_TIMEOUT_S)

    # -- behaviour ---------------------------------------------------------------------------
    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            item = self._script.popleft() if self._script else None
        if item is None and self.responder is not None:
            item = self.responder(body)
        if item is None:
            item = self.default_text
        return Reply(text=item) if isinstance(item, str) else item

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        # like the real service, echo the key that was given, so redaction can be tested
        return _error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def list_models(request: Request) -> Response:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers)))
            if (denied := self._unauthorized(request)) is not None:
                return denied
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            return JSONResponse({"object": "list", "data": data})

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            body = await request.json()
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
            if (denied := self._unauthorized(request)) is not None:
                return denied
            return self._answer(body, self._next_reply(body))

        return app

    def _answer(self, body: dict[str, Any], reply: Reply) -> Response:
        stream = bool(body.get("stream"))
        if reply.status != 200:
            headers = {} if reply.retry_after is None else {"retry-after": f"{reply.retry_after:g}"}
            return _error(reply.status, f"injected failure {reply.status}", "server_error", headers)
        if reply.malformed:
            media = "text/event-stream" if stream else "application/json"
            text = 'data: {"id": "broken", "choices": [\n\n' if stream else '{"id": "broken",'
            return Response(text, media_type=media)
        chunks, finish = _generate(reply, body)
        usage = _usage(body, chunks)
        if not stream:
            return JSONResponse(_completion(body, "".join(chunks), finish, usage))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _sse_events(
            body,
            chunks,
            finish,
            usage if include_usage and reply.usage else None,
            reply.fail_after_chunks,
        )
        return StreamingResponse(events, media_type="text/event-stream")


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _generate(reply: Reply, body: dict[str, Any]) -> tuple[list[str], str]:
    """The text chunks to send and the finish reason, applying `stop` and `max_tokens`."""
    text = reply.text
    stops = body.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    chunks = _words(text)
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if limit is not None and len(chunks) > limit:
        chunks, finish = chunks[:limit], "length"
    return chunks, reply.finish_reason or finish


def _usage(body: dict[str, Any], chunks: list[str]) -> dict[str, int]:
    prompt = sum(len(_words(str(m.get("content", "")))) for m in body.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(chunks),
        "total_tokens": prompt + len(chunks),
    }


def _completion(body: dict[str, Any], text: str, finish: str, usage: dict[str, int]) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def _sse_events(
    body: dict[str, Any],
    chunks: list[str],
    finish: str,
    usage: dict[str, int] | None,
    fail_after: int | None,
) -> Iterator[str]:
    ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    with_usage_field = usage is not None

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> str:
        obj: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model", ""),
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if with_usage_field:
            obj["usage"] = None
        return f"data: {json.dumps(obj)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for i, text in enumerate(chunks):
        if fail_after is not None and i >= fail_after:
            error = {"error": {"message": "injected stream failure", "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        yield chunk({"content": text}, None)
    yield chunk({}, finish)
    if usage is not None:
        final = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model", ""),
            "system_fingerprint": None,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"
