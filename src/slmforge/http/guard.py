"""The ASGI middleware in front of every server: API keys, the body size limit, counting.

It runs before anything reads the request, so a request without a valid key or with a body over
the limit is refused before a route, a validator or a multipart parser sees it. What it
enforces is a `GuardPolicy` the server builds and keeps (Ray Serve sets `replica` on a
replica's policy after the app is made, so the policy is read per request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from slmforge.http.auth import ApiKeys
from slmforge.http.errors import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})
COUNTED_PREFIX = "/v1/"
BODY_METHODS = ("POST", "PUT", "PATCH")


@dataclass
class GuardPolicy:
    keys: ApiKeys
    max_body_bytes: int
    open_paths: frozenset[str] = OPEN_PATHS  # answered without a key
    # called with (path, status) once each /v1/ request is answered, refused ones included
    count: Callable[[str, int], None] | None = None
    replica: str | None = None  # sent as x-slmforge-replica on every response


class Guard:
    """ASGI middleware: API key check, body size limit and request counting, for every path."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = 500  # what is counted if the app fails before it answers

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.policy.replica is not None:
                    headers = [*message.get("headers", [])]
                    headers.append((b"x-slmforge-replica", self.policy.replica.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            rejection = self._reject(scope, path)
            if rejection is None and scope["method"] in BODY_METHODS:
                body = await self._read_body(receive)
                if body is None:
                    rejection = self._too_large()
                else:
                    receive = _replay(body, receive)
            if rejection is not None:
                await rejection(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            if path.startswith(COUNTED_PREFIX) and self.policy.count is not None:
                self.policy.count(path, status)

    def _reject(self, scope: Scope, path: str) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path not in self.policy.open_paths and not self.policy.keys.allows(
            headers.get("authorization")
        ):
            return APIError(
                401,
                "Incorrect or missing API key. Pass it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            ).response()
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.policy.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        limit = self.policy.max_body_bytes
        return APIError(413, f"The request body is larger than {limit} bytes.").response()

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (a chunked body has no
        Content-Length to check up front)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.policy.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands out the buffered body, then the client's later messages
    (so disconnects are still seen)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
