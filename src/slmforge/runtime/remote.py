"""`RemoteEngine`: any OpenAI-compatible chat endpoint through the official `openai` client.

Our server, Azure OpenAI, vLLM, llama-server and Ollama all speak `/v1/chat/completions`. The
client's own retries are off (`max_retries=0`): this module retries 408/409/429/5xx, connection
errors and garbled responses itself, with exponential backoff and jitter, honouring
`Retry-After` (capped), bounded in attempts and in total time. A stream is only retried before
its first token; once text has been handed on, a failure raises `RemoteError`, because a retry
would repeat text the caller already has.

The API key never appears in an error message: server messages that echo it are redacted.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from slmforge.config.endpoints import LOCAL_KEY
from slmforge.errors import InputError, RemoteError
from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Message, ToolCall, Usage

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_RETRY_STATUSES = {408, 409, 429}
_KEY_PATTERN = re.compile(r"\b(sk-|Bearer\s+)[A-Za-z0-9_\-*.]{4,}")
_MAX_DETAIL_CHARS = 300


def is_local_url(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host in _LOCAL_HOSTS or host.endswith(".localhost")


def safe_url(base_url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(base_url)
    if "@" not in parts.netloc:
        return base_url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def resolve_api_key(base_url: str, api_key: str | None, api_key_env: str) -> str:
    """The key to send: the option, else the env var, else "none" for a local server."""
    key = api_key or os.environ.get(api_key_env, "")
    if key:
        return key
    if is_local_url(base_url):
        return LOCAL_KEY
    raise InputError(
        f"{safe_url(base_url)} needs an API key: set the {api_key_env} environment variable"
    )


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if given."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / divisor, 0.0)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if divisor == 1.0 else None
            if parsed is not None:
                return max(parsed.timestamp() - time.time(), 0.0)
    return None


@dataclass(frozen=True)
class _Failure:
    """What went wrong in one attempt: HTTP status (if any), a redacted detail, Retry-After."""

    status: int | None
    detail: str
    retry_after: float | None
    retry: bool


def _classify(exc: Exception) -> _Failure:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry = status in _RETRY_STATUSES or status >= 500
        # the client's message starts "Error code: 429 - "; we say the status once, ourselves
        detail = re.sub(r"^Error code: \d+ - ", "", exc.message)
        return _Failure(status, detail, parse_retry_after(exc.response.headers), retry)
    if isinstance(exc, openai.APITimeoutError):
        return _Failure(None, "request timed out", None, True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure(None, f"connection failed ({exc.__cause__ or exc})", None, True)
    if isinstance(exc, json.JSONDecodeError | openai.APIResponseValidationError):
        return _Failure(None, "the server sent a malformed response", None, True)
    # an error event inside the stream (openai.APIError without a status)
    return _Failure(None, str(exc), None, True)


_ERRORS = (openai.APIError, json.JSONDecodeError)


class RemoteEngine(BaseEngine):
    """Chat with `model` at `base_url`; `adapter`, when given, is the model name to ask for
    (our server exposes each adapter as a model). With `api_version` the endpoint is Azure
    OpenAI: `base_url` is the resource endpoint and `model` the deployment."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_total_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        api_version: str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.name = name or f"openai:{model}@{safe_url(base_url)}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_total_s = max_total_s
        self.retries = 0  # retries made over this engine's life, for reports and tests
        self._sleep = sleep
        self._jitter = random.Random()
        self._key = resolve_api_key(base_url, api_key, api_key_env)
        self._client: openai.OpenAI
        if api_version:
            self._client = openai.AzureOpenAI(
                azure_endpoint=base_url,
                api_version=api_version,
                api_key=self._key,
                max_retries=0,
                timeout=timeout_s,
            )
        else:
            self._client = openai.OpenAI(
                base_url=base_url, api_key=self._key, max_retries=0, timeout=timeout_s
            )

    def adapters(self) -> list[str]:
        return []

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        request = self._request(messages, params, adapter or self.model)
        stream, chunks, head = self._open(request)
        try:
            yield from _deltas(head, self._rest(chunks))
        finally:
            stream.close()

    # -- requests ----------------------------------------------------------------------------
    def _request(self, messages: list[Message], params: GenParams, model: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.top_k:
            # not in the OpenAI schema; vLLM, llama-server and our server read it from the body
            request["extra_body"] = {"top_k": params.top_k}
        if params.tools:
            request["tools"] = params.tools
            request["tool_choice"] = params.tool_choice
            request["parallel_tool_calls"] = params.parallel_tool_calls
        if params.json_schema is not None:
            request["response_format"] = {"type": "json_schema", "json_schema": params.json_schema}
        elif params.json_mode:
            request["response_format"] = {"type": "json_object"}
        return request

    def _open(self, request: dict[str, Any]) -> tuple[Any, Iterator[Any], list[Any]]:
        """Start the stream and read it up to its first text, retrying failures until then."""
        deadline = time.monotonic() + self.max_total_s
        attempt = 0
        while True:
            attempt += 1
            stream = None
            try:
                stream = self._client.chat.completions.create(**request)
                chunks = iter(stream)
                return stream, chunks, _read_head(chunks)
            except _ERRORS as exc:
                if stream is not None:
                    stream.close()
                failure = _classify(exc)
                if not failure.retry or attempt > self.max_retries:
                    raise self._error(failure, attempt) from None
                wait = self._wait(attempt, failure.retry_after)
                if time.monotonic() + wait > deadline:
                    raise self._error(failure, attempt, "out of retry time") from None
                self.retries += 1
                self._sleep(wait)

    def _rest(self, chunks: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from chunks
        except _ERRORS as exc:
            raise self._error(_classify(exc), 1, "failed mid-stream") from None

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        # full jitter in the upper half keeps clients that failed together from retrying together
        return base * self._jitter.uniform(0.5, 1.0)

    def _error(self, failure: _Failure, attempts: int, note: str = "") -> RemoteError:
        status = f"HTTP {failure.status}: " if failure.status is not None else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        note = f" ({note})" if note else ""
        message = f"{self.name}: {status}{self._redact(failure.detail)}{tries}{note}"
        if failure.status == 401:
            message += "; check the API key"
        return RemoteError(message, status=failure.status)

    def _redact(self, text: str) -> str:
        if self._key and self._key != LOCAL_KEY:
            text = text.replace(self._key, "***")
        text = _KEY_PATTERN.sub(lambda m: f"{m.group(1)}***", text)
        return text[:_MAX_DETAIL_CHARS]


def _read_head(chunks: Iterator[Any]) -> list[Any]:
    """Chunks up to and including the first that carries text (or all of a textless stream)."""
    head = []
    for chunk in chunks:
        head.append(chunk)
        if any(getattr(c.delta, "content", None) for c in chunk.choices or []):
            break
    return head


def _deltas(head: list[Any], rest: Iterator[Any]) -> Iterator[Delta]:
    """Text deltas from OpenAI chunks, the tool calls (assembled from their pieces) once the
    stream ends, then one final delta with finish_reason and usage."""
    finish_reason: str | None = None
    usage = Usage()
    calls: dict[int, dict[str, str]] = {}
    for chunk in _chain(head, rest):
        if chunk.usage is not None:
            usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens or 0,
                completion_tokens=chunk.usage.completion_tokens or 0,
            )
        for choice in chunk.choices or []:
            if choice.delta is not None and choice.delta.content:
                yield Delta(text=choice.delta.content)
            for piece in (choice.delta.tool_calls if choice.delta else None) or []:
                _add_piece(calls, piece)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    if calls:
        yield Delta(
            tool_calls=[ToolCall(c["id"], c["name"], c["arguments"]) for c in calls.values()]
        )
    yield Delta(finish_reason=finish_reason or "stop", usage=usage)


def _add_piece(calls: dict[int, dict[str, str]], piece: Any) -> None:
    """One streamed piece of a call: the id and name come once, the arguments in fragments."""
    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
    call["id"] = piece.id or call["id"]
    if piece.function is not None:
        call["name"] = piece.function.name or call["name"]
        call["arguments"] += piece.function.arguments or ""


def _chain(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rest
