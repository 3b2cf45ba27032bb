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

from slmforge.errors import InputError
from slmforge.http.errors import APIError
from slmforge.http.streams import iterate_in_thread
from slmforge.routing.router import Decision, Event, Part, settled
from slmforge.runtime.engine import Usage
from slmforge.serve.app import ServerState
from slmforge.serve.generation import Recorder
from slmforge.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
    UsageInfo,
    response_head,
)
from slmforge.serve.serving import bad_request, respond
from slmforge.serve.serving_chat import chat_chunks, chat_inputs, delta_chunk

SIDE_INDEX = {"local": 0, "cloud": 1}


def build_router(state: ServerState, engine: Any, cloud: Any) -> Any:
    """The router over the served model's engine and the `--cloud` engine."""
    from slmforge.config.app import route_settings
    from slmforge.routing.router import Router

    settings = route_settings(state.config)
    return Router(engine, cloud, settings, state.content_filter)


async def routed_chat_completion(
    state: ServerState, body: ChatCompletionRequest, request: Request
) -> Any:
    if body.n != 1:
        raise APIError(400, "With --route, n must be 1.", param="n", code="invalid_value")
    if body.logprobs:
        raise APIError(400, "logprobs are not available with --route.", param="logprobs")
    inputs = chat_inputs(state, body)
    # remote engines cannot constrain a reply to JSON, so neither side is: both answer alike
    params = body.to_gen_params(state.config.max_tokens_cap).model_copy(update={"json_mode": False})
    try:
        events = state.router.chat(inputs.messages, params, state.config.route, inputs.adapter)
    except InputError as exc:
        raise bad_request(exc, "model") from None
    run = _RoutedRun(settled(events), body, Recorder(state.metrics, "chat", body.model))
    return await respond(state, request, bool(body.stream), run)


class _RoutedRun:
    def __init__(
        self, events: Iterator[Event], body: ChatCompletionRequest, recorder: Recorder
    ) -> None:
        self.source = events
        self.body = body
        self.recorder = recorder
        self.usage = Usage()

    async def parts(self) -> AsyncIterator[Event]:
        async for event in iterate_in_thread(lambda: self.source):
            if isinstance(event, Part):
                if event.error is not None:
                    raise APIError(502, f"The {event.side} model failed: {event.error}")
                if event.delta is not None:
                    self.recorder.saw(event.delta)
                    if event.delta.usage is not None:
                        self.usage.prompt_tokens += event.delta.usage.prompt_tokens
                        self.usage.completion_tokens += event.delta.usage.completion_tokens
            yield event

    async def whole(self) -> ChatCompletionResponse:
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
            ChatChoice(
                index=index,
                message=AssistantMessage(content="".join(texts[index])),
                finish_reason=finish.get(index, "stop"),
            )
            for index in sorted(texts)
        ]
        return ChatCompletionResponse(
            **response_head("chatcmpl-", self.body.model),
            choices=choices,
            usage=UsageInfo.of(self.usage),
            slmforge_route=route,
        )

    async def events(self) -> AsyncIterator[str]:
        chunks = chat_chunks(self.body)
        async for event in self.parts():
            if isinstance(event, Decision):
                for side in event.sides:
                    role = DeltaMessage(role="assistant", content="")
                    first = side == event.sides[0]  # the decision rides on the first chunk
                    route = {"slmforge_route": event.to_dict()} if first else {}
                    choice = ChatChunkChoice(index=SIDE_INDEX[side], delta=role)
                    yield chunks.chunk([choice], **route)
                continue
            index, delta = SIDE_INDEX[event.side], event.delta
            if delta is None:
                continue
            if delta.text:
                yield delta_chunk(chunks, index, DeltaMessage(content=delta.text))
            if delta.finish_reason is not None:
                yield delta_chunk(chunks, index, DeltaMessage(), finish_reason=delta.finish_reason)
        for chunk in chunks.usage(self.usage):
            yield chunk
