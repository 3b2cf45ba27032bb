"""`slmforge serve --route POLICY --cloud SPEC`: chat completions answered through the router.

The served model is the local side; the router (`app/router.py`) decides per request whether it
or the cloud model answers. The answer is an ordinary chat completion plus `slmforge_route`
(the decision: policy, sides, reason) on the response, or on the first chunk of a stream. With
`compare`, choice 0 is the local answer and choice 1 the cloud's. An OpenAI client cannot take
streamed text back, so a local-first answer is held until it is complete (`settled`): a
fallback never sends text twice. The server's content filter screens prompts as always (400)
and local answers (a block makes local-first fall back); the cloud answers under its provider's
filter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request

from slmforge.app.router import Decision, Event, Part, settled
from slmforge.errors import InputError
from slmforge.http.errors import APIError
from slmforge.runtime.engine import Usage
from slmforge.serve.app import (
    ReleasingStreamingResponse,
    ServerState,
    admitted,
    bad_request,
    sampling_params,
    until_disconnect,
)
from slmforge.serve.generation import Recorder
from slmforge.serve.responses import Envelope, sse, usage_dict
from slmforge.serve.scheduler import iterate_in_thread

SIDE_INDEX = {"local": 0, "cloud": 1}


def build_router(state: ServerState, engine: Any, cloud: Any) -> Any:
    """The router over the served model's engine and the `--cloud` engine."""
    from slmforge.app.router import Router
    from slmforge.config.app import route_settings

    settings = route_settings(state.config)
    return Router(engine, cloud, settings, state.content_filter)


async def routed_chat(state: ServerState, body: Any, request: Request) -> Any:
    if body.n != 1:
        raise APIError(400, "With --route, n must be 1.", param="n", code="invalid_value")
    if body.logprobs:
        raise APIError(400, "logprobs are not available with --route.", param="logprobs")
    adapter = state.adapter_for(body.model)
    messages = body.chat_messages()
    state.check_input(messages)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = sampling_params(body, state.max_tokens(body.requested_max_tokens(), param))
    try:
        events = state.router.chat(messages, params, state.config.route, adapter)
    except InputError as exc:
        raise bad_request(exc, "model") from None
    run = _RoutedRun(settled(events), body, Recorder(state.metrics, "chat", body.model))
    slot = await admitted(state)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ReleasingStreamingResponse(run.stream(include_usage), slot)
    async with slot:
        return await until_disconnect(request, run.whole())


class _RoutedRun:
    def __init__(self, events: Iterator[Event], body: Any, recorder: Recorder) -> None:
        self.events = events
        self.recorder = recorder
        self.kind = "chat.completion.chunk" if body.stream else "chat.completion"
        self.envelope = Envelope(self.kind, body.model)
        self.usage = Usage()

    async def parts(self) -> AsyncIterator[Event]:
        async for event in iterate_in_thread(lambda: self.events):
            if isinstance(event, Part):
                if event.error is not None:
                    raise APIError(502, f"The {event.side} model failed: {event.error}")
                if event.delta is not None:
                    self.recorder.saw(event.delta)
                    if event.delta.usage is not None:
                        self.usage.prompt_tokens += event.delta.usage.prompt_tokens
                        self.usage.completion_tokens += event.delta.usage.completion_tokens
            yield event

    async def whole(self) -> dict[str, Any]:
        route: dict[str, Any] = {}
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        async for event in self.parts():
            if isinstance(event, Decision):
                route = event.to_dict()
                continue
            index, delta = SIDE_INDEX[event.side], event.delta
            texts.setdefault(index, [])
            if delta is not None and delta.text:
                texts[index].append(delta.text)
            if delta is not None and delta.finish_reason is not None:
                finish[index] = delta.finish_reason
        self.recorder.done()
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(texts[index]), "refusal": None},
                "logprobs": None,
                "finish_reason": finish.get(index, "stop"),
            }
            for index in sorted(texts)
        ]
        return self.envelope.wrap(
            choices=choices, usage=usage_dict(self.usage), slmforge_route=route
        )

    def _chunk(self, index: int, delta: dict[str, Any], extra: dict[str, Any], **rest: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None} | rest
        return sse(self.envelope.wrap(choices=[choice], **extra))

    async def _stream(self, include_usage: bool) -> AsyncIterator[str]:
        extra = {"usage": None} if include_usage else {}
        async for event in self.parts():
            if isinstance(event, Decision):
                for side in event.sides:
                    role = {"role": "assistant", "content": ""}
                    route = {"slmforge_route": event.to_dict()} if side == event.sides[0] else {}
                    yield self._chunk(SIDE_INDEX[side], role, extra | route)
                continue
            index, delta = SIDE_INDEX[event.side], event.delta
            if delta is None:
                continue
            if delta.text:
                yield self._chunk(index, {"content": delta.text}, extra)
            if delta.finish_reason is not None:
                yield self._chunk(index, {}, extra, finish_reason=delta.finish_reason)
        if include_usage:
            yield sse(self.envelope.wrap(choices=[], usage=usage_dict(self.usage)))

    def stream(self, include_usage: bool) -> AsyncIterator[str]:
        from slmforge.serve.routes import finished_stream

        return finished_stream(self._stream(include_usage), self.recorder)
