"""`/v1/chat/completions`: one local engine's answers, whole or streamed, `n` choices each.

With `serve --route` the router answers instead (`routed.py`); both take their inputs through
`chat_inputs` and stream through the same `Chunks`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from slmforge.errors import InputError
from slmforge.runtime.engine import Delta, Usage
from slmforge.runtime.local import ContextLengthError
from slmforge.safety.verdicts import FilterVerdict
from slmforge.serve.app import ServerState
from slmforge.serve.generation import Recorder, choice_params, collect, engine_deltas
from slmforge.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    UsageInfo,
    response_head,
)
from slmforge.serve.protocol_tools import DeltaToolCall, ToolCallObject
from slmforge.serve.serving import Annotations, Chunks, bad_request, context_error, respond


@dataclass
class ChatInputs:
    adapter: str | None  # None = the base model
    messages: list[dict[str, str]]
    verdict: FilterVerdict  # the content filter's verdict on the prompt


def chat_inputs(state: ServerState, body: ChatCompletionRequest) -> ChatInputs:
    """The adapter the request names and its messages, which the content filter has passed."""
    adapter = state.adapter_for(body.model)
    messages = body.chat_messages()
    return ChatInputs(adapter, messages, state.check_input(messages))


def chat_chunks(body: ChatCompletionRequest) -> Chunks:
    return Chunks(ChatCompletionChunk, response_head("chatcmpl-", body.model), body.include_usage())


def delta_chunk(chunks: Chunks, index: int, delta: DeltaMessage, **fields: Any) -> str:
    """A chunk with one choice's delta; `fields` go on the choice (finish_reason, ...)."""
    return chunks.chunk([ChatChunkChoice(index=index, delta=delta, **fields)])


async def create_chat_completion(
    state: ServerState, body: ChatCompletionRequest, request: Request
) -> Any:
    if state.router is not None:  # serve --route: the router picks who answers
        from slmforge.serve.routed import routed_chat_completion

        return await routed_chat_completion(state, body, request)
    engine = state.ready().engine
    inputs = chat_inputs(state, body)
    params = body.to_gen_params(state.config.max_tokens_cap)
    try:
        prompt = engine.prompt_ids(inputs.messages, params.tools)
        engine.check_room(len(prompt))
    except ContextLengthError as exc:
        raise context_error(exc, "messages") from None
    try:
        engine.check_params(params)
    except InputError as exc:
        raise bad_request(exc, str(exc).split(":", 1)[0]) from None
    recorder = Recorder(state.metrics, "chat", body.model)
    recorder.prompt(len(prompt))
    annotations = Annotations(state, [inputs.verdict])
    run = _ChatRun(engine, prompt, params, inputs.adapter, body, recorder, annotations)
    return await respond(state, request, bool(body.stream), run)


class _ChatRun:
    def __init__(self, engine, prompt, params, adapter, body, recorder, annotations) -> None:
        self.engine, self.prompt, self.params, self.adapter = engine, prompt, params, adapter
        self.body, self.recorder, self.annotations = body, recorder, annotations

    def deltas(self, index: int) -> AsyncIterator[Delta]:
        params = choice_params(self.params, index)
        stream = engine_deltas(self.engine, self.prompt, params, self.adapter)
        return self.annotations.screen(stream, index)

    def logprobs(self, entries: list[Any]) -> ChatLogprobs | None:
        if not self.params.logprobs:
            return None
        return ChatLogprobs.of(entries, self.engine.token_text)

    async def whole(self) -> ChatCompletionResponse:
        choices, usage = [], Usage(prompt_tokens=len(self.prompt))
        for index in range(self.body.n):
            result = await collect(self.deltas(index), self.recorder)
            usage.completion_tokens += result.usage.completion_tokens
            calls = [ToolCallObject.of(call) for call in result.tool_calls]
            message = AssistantMessage(content=result.text or None if calls else result.text)
            if calls:
                message.tool_calls = calls
            choices.append(
                ChatChoice(
                    index=index,
                    message=message,
                    logprobs=self.logprobs(result.logprobs),
                    finish_reason=result.finish_reason,
                    **self.annotations.choice(index),
                )
            )
        self.recorder.done()
        return ChatCompletionResponse(
            **response_head("chatcmpl-", self.body.model),
            choices=choices,
            usage=UsageInfo.of(usage),
            **self.annotations.prompt,
        )

    async def events(self) -> AsyncIterator[str]:
        chunks = chat_chunks(self.body)
        usage = Usage(prompt_tokens=len(self.prompt))
        for chunk in self.annotations.first_chunk(chunks):
            yield chunk
        for index in range(self.body.n):
            yield delta_chunk(chunks, index, DeltaMessage(role="assistant", content=""))
            calls = 0
            async for delta in self.deltas(index):
                self.recorder.saw(delta)
                for call in delta.tool_calls or []:
                    for piece in DeltaToolCall.pieces(calls, call):
                        yield delta_chunk(chunks, index, DeltaMessage(tool_calls=[piece]))
                    calls += 1
                if delta.finish_reason is not None:
                    usage.completion_tokens += (delta.usage or Usage()).completion_tokens
                    yield delta_chunk(
                        chunks,
                        index,
                        DeltaMessage(),
                        finish_reason=delta.finish_reason,
                        **self.annotations.choice(index),
                    )
                elif delta.text or delta.logprobs:
                    yield delta_chunk(
                        chunks,
                        index,
                        DeltaMessage(content=delta.text),
                        logprobs=self.logprobs(delta.logprobs or []),
                    )
        for chunk in chunks.usage(usage):
            yield chunk
