"""The routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, `/health`, `/metrics`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from slmforge.errors import InputError
from slmforge.http.errors import APIError
from slmforge.runtime.engine import Usage
from slmforge.runtime.local import ContextLengthError
from slmforge.serve.app import (
    ReleasingStreamingResponse,
    ServerState,
    admitted,
    bad_request,
    context_error,
    sampling_params,
    until_disconnect,
)
from slmforge.serve.generation import (
    ChoiceResult,
    Recorder,
    choice_params,
    collect,
    engine_deltas,
    screened,
)
from slmforge.serve.responses import (
    Envelope,
    LegacyLogprobs,
    chat_logprobs,
    sse,
    usage_dict,
)
from slmforge.serve.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)


def add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        if state.served is not None:
            return JSONResponse({"status": "ok", "model": state.served.name})
        status = "error" if state.load_error else "loading"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        served = state.ready()
        return {"object": "list", "data": [_model_card(served, m) for m in served.model_ids()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        state.adapter_for(model)
        return _model_card(state.ready(), model)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if state.router is not None:  # serve --route: the router picks who answers
            from slmforge.serve.routed import routed_chat

            return await routed_chat(state, body, request)
        return await _chat(state, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await _completion(state, body, request)

    add_tokenizer_routes(app, state)


def add_tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    """vLLM's tokenizer endpoints, so clients (lm-eval's remote tokenizer) need no local copy."""

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        engine = state.ready().engine
        tokenizer = engine.tokenizer
        return {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token,
            "chat_template": tokenizer.chat_template,
            "model_max_length": engine.context_length,
            "vocab_size": len(tokenizer),
        }

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        engine = state.ready().engine
        if body.model is not None:
            state.adapter_for(body.model)
        if body.messages is not None:
            tokens = engine.prompt_ids([_message(m) for m in body.messages])
        else:
            tokens = engine.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)[
                "input_ids"
            ]
        return {"count": len(tokens), "max_model_len": engine.context_length, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        engine = state.ready().engine
        if body.tokens:
            _prompt_ids(engine, body.tokens, 0, False)  # ids outside the vocabulary are a 400
        return {"prompt": engine.tokenizer.decode(body.tokens)}


def _message(message: Any) -> dict[str, str]:
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text()}


def _model_card(served: Any, model_id: str) -> dict[str, Any]:
    card = {"id": model_id, "object": "model", "created": served.created, "owned_by": "slmforge"}
    if model_id != served.name:
        card["parent"] = served.name
    card["root"] = served.name
    return card


# -- chat ------------------------------------------------------------------------------------


async def _chat(state: ServerState, body: ChatCompletionRequest, request: Request) -> Any:
    served = state.ready()
    adapter = state.adapter_for(body.model)
    messages = body.chat_messages()
    verdict = state.check_input(messages)
    engine = served.engine
    try:
        prompt = engine.prompt_ids(messages)
        engine.check_room(len(prompt))
    except ContextLengthError as exc:
        raise context_error(exc) from None
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = sampling_params(
        body,
        state.max_tokens(body.requested_max_tokens(), param),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        json_mode=body.response_format is not None and body.response_format.type == "json_object",
    )
    envelope = Envelope("chat.completion.chunk" if body.stream else "chat.completion", body.model)
    recorder = Recorder(state.metrics, "chat", body.model)
    recorder.prompt(len(prompt))
    run = _ChatRun(state, engine, prompt, params, adapter, envelope, recorder, body.n)
    run.annotations = Annotations(state, [verdict])
    slot = await admitted(state)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ReleasingStreamingResponse(run.events(include_usage), slot)
    async with slot:
        return await until_disconnect(request, run.whole())


class Annotations:
    """Azure OpenAI's filter annotations: `prompt_filter_results` on the response and
    `content_filter_results` on each choice; nothing at all when no filter is configured."""

    def __init__(self, state: ServerState, prompt_verdicts: list[Any]) -> None:
        self.state = state
        self.prompt = state.prompt_filter_results(prompt_verdicts)
        self.outputs: dict[int, Any] = {}

    def screen(self, deltas: AsyncIterator[Any], index: int) -> AsyncIterator[Any]:
        def seen(verdict: Any) -> None:
            self.outputs[index] = verdict
            if verdict.blocked:
                self.state.metrics.count_filtered("output", verdict.results)

        return screened(deltas, self.state.content_filter, seen)

    def choice(self, index: int) -> dict[str, Any]:
        if not self.state.annotates:
            return {}
        verdict = self.outputs.get(index)
        return {"content_filter_results": verdict.results if verdict is not None else {}}

    def first_chunk(self, envelope: Envelope, **extra: Any) -> list[str]:
        """Streams open with a chunk without choices that holds the prompt's results."""
        return [sse(envelope.wrap(choices=[], **self.prompt, **extra))] if self.prompt else []


class _ChatRun:
    annotations: Annotations

    def __init__(self, state, engine, prompt, params, adapter, envelope, recorder, n) -> None:
        self.state, self.engine, self.prompt, self.params = state, engine, prompt, params
        self.adapter, self.envelope, self.recorder, self.n = adapter, envelope, recorder, n

    def deltas(self, index: int) -> AsyncIterator[Any]:
        params = choice_params(self.params, index)
        stream = engine_deltas(self.engine, self.prompt, params, self.adapter)
        return self.annotations.screen(stream, index)

    def logprobs(self, entries: list[Any]) -> dict[str, Any] | None:
        if not self.params.logprobs:
            return None
        return {"content": chat_logprobs(entries, self.engine.token_text), "refusal": None}

    async def whole(self) -> dict[str, Any]:
        choices, usage = [], Usage(prompt_tokens=len(self.prompt))
        for index in range(self.n):
            result: ChoiceResult = await collect(self.deltas(index), self.recorder)
            usage.completion_tokens += result.usage.completion_tokens
            message = {"role": "assistant", "content": result.text, "refusal": None}
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": self.logprobs(result.logprobs),
                    "finish_reason": result.finish_reason,
                    **self.annotations.choice(index),
                }
            )
        self.recorder.done()
        return self.envelope.wrap(
            choices=choices, usage=usage_dict(usage), **self.annotations.prompt
        )

    def _chunk(self, index: int, delta: dict[str, Any], include_usage: bool, **rest: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None} | rest
        extra = {"usage": None} if include_usage else {}
        return sse(self.envelope.wrap(choices=[choice], **extra))

    def events(self, include_usage: bool) -> AsyncIterator[str]:
        return finished_stream(self._events(include_usage), self.recorder)

    async def _events(self, include_usage: bool) -> AsyncIterator[str]:
        usage = Usage(prompt_tokens=len(self.prompt))
        extra = {"usage": None} if include_usage else {}
        for chunk in self.annotations.first_chunk(self.envelope, **extra):
            yield chunk
        for index in range(self.n):
            yield self._chunk(index, {"role": "assistant", "content": ""}, include_usage)
            async for delta in self.deltas(index):
                self.recorder.saw(delta)
                if delta.finish_reason is not None:
                    usage.completion_tokens += (delta.usage or Usage()).completion_tokens
                    yield self._chunk(
                        index,
                        {},
                        include_usage,
                        finish_reason=delta.finish_reason,
                        **self.annotations.choice(index),
                    )
                elif delta.text or delta.logprobs:
                    yield self._chunk(
                        index,
                        {"content": delta.text},
                        include_usage,
                        logprobs=self.logprobs(delta.logprobs or []),
                    )
        if include_usage:
            yield sse(self.envelope.wrap(choices=[], usage=usage_dict(usage)))


async def finished_stream(events: AsyncIterator[str], recorder: Recorder) -> AsyncIterator[str]:
    """A stream's events, then `[DONE]`; an error after the stream started is reported in the
    stream as an OpenAI error object (the status line has already been sent)."""
    try:
        async for event in events:
            yield event
    except (APIError, InputError) as exc:
        yield sse(_error_body(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        yield sse(APIError(500, "The server had an error while generating.").body())
    recorder.done()
    yield sse("[DONE]")


def _error_body(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, APIError):
        return exc.body()
    return bad_request(exc, None).body()  # type: ignore[arg-type]


# -- text completions ------------------------------------------------------------------------


def _prompt_ids(engine: Any, prompt: str | list[int], index: int, many: bool) -> list[int]:
    param = f"prompt[{index}]" if many else "prompt"
    if isinstance(prompt, str):
        ids = engine.encode(prompt)
        if not ids:
            raise APIError(400, f"{param} is empty", param=param, code="invalid_value")
        return ids
    vocab = len(engine.tokenizer)
    bad = next((t for t in prompt if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(
            400,
            f"{param} has token id {bad}, outside this model's vocabulary (0..{vocab - 1})",
            param=param,
            code="invalid_value",
        )
    return list(prompt)


async def _completion(state: ServerState, body: CompletionRequest, request: Request) -> Any:
    served = state.ready()
    adapter = state.adapter_for(body.model)
    engine = served.engine
    raw = body.prompts()
    prompts = [_prompt_ids(engine, p, i, len(raw) > 1) for i, p in enumerate(raw)]
    for ids in prompts:
        try:
            engine.check_room(len(ids))
        except ContextLengthError as exc:
            raise APIError(413, str(exc), param="prompt", code="context_length_exceeded") from None
    verdicts = [
        state.check_input([{"role": "user", "content": engine.tokenizer.decode(p)}])
        for p in prompts
    ]
    top = body.logprobs
    params = sampling_params(
        body,
        state.max_tokens(body.max_tokens, "max_tokens"),
        logprobs=top is not None,
        top_logprobs=top or 0,
    )
    envelope = Envelope("text_completion", body.model)
    recorder = Recorder(state.metrics, "completions", body.model)
    recorder.prompt(sum(len(p) for p in prompts))
    run = _CompletionRun(state, engine, params, adapter, recorder, body)
    run.annotations = Annotations(state, verdicts)
    slot = await admitted(state)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ReleasingStreamingResponse(run.events(prompts, envelope, include_usage), slot)
    async with slot:
        return await until_disconnect(request, run.whole(prompts, envelope))


class _CompletionRun:
    annotations: Annotations

    def __init__(self, state, engine, params, adapter, recorder, body) -> None:
        self.state, self.engine, self.params, self.adapter = state, engine, params, adapter
        self.recorder, self.body = recorder, body

    async def echo(self, prompt: list[int], logprobs: LegacyLogprobs | None) -> str:
        """The prompt's text, and its tokens' log-probabilities when asked for."""
        if logprobs is not None:
            scored = await asyncio.to_thread(
                self.engine.score, prompt, self.adapter, self.body.logprobs or 0
            )
            for token_id, entry in zip(prompt, scored, strict=True):
                logprobs.add(token_id, entry)
        return self.engine.tokenizer.decode(prompt)

    def deltas(self, prompt: list[int], index: int, choice: int) -> AsyncIterator[Any]:
        params = choice_params(self.params, index)
        stream = engine_deltas(self.engine, prompt, params, self.adapter)
        return self.annotations.screen(stream, choice)

    def _legacy(self) -> LegacyLogprobs | None:
        if self.body.logprobs is None:
            return None
        return LegacyLogprobs(self.engine.token_text, self.body.logprobs)

    async def one(self, prompt: list[int], index: int, choice: int) -> tuple[dict[str, Any], Usage]:
        logprobs = self._legacy()
        text = await self.echo(prompt, logprobs) if self.body.echo else ""
        result = ChoiceResult(finish_reason="length")
        if self.body.max_tokens:
            result = await collect(self.deltas(prompt, index, choice), self.recorder)
        if logprobs is not None:
            for entry in result.logprobs:
                logprobs.add(entry.token_id, entry)
        body = {
            "text": text + result.text,
            "logprobs": logprobs.as_dict() if logprobs is not None else None,
            "finish_reason": result.finish_reason,
            **self.annotations.choice(choice),
        }
        return body, result.usage

    async def whole(self, prompts: list[list[int]], envelope: Envelope) -> dict[str, Any]:
        choices, usage = [], Usage(prompt_tokens=sum(len(p) for p in prompts))
        for p_index, prompt in enumerate(prompts):
            for n_index in range(self.body.n):
                index = p_index * self.body.n + n_index
                choice, choice_usage = await self.one(prompt, n_index, index)
                choices.append({"index": index, **choice})
                usage.completion_tokens += choice_usage.completion_tokens
        self.recorder.done()
        return envelope.wrap(choices=choices, usage=usage_dict(usage), **self.annotations.prompt)

    def events(
        self, prompts: list[list[int]], envelope: Envelope, include_usage: bool
    ) -> AsyncIterator[str]:
        return finished_stream(self._events(prompts, envelope, include_usage), self.recorder)

    async def _events(
        self, prompts: list[list[int]], envelope: Envelope, include_usage: bool
    ) -> AsyncIterator[str]:
        usage = Usage(prompt_tokens=sum(len(p) for p in prompts))
        extra = {"usage": None} if include_usage else {}

        def chunk(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> str:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            if finish is not None:
                choice |= self.annotations.choice(index)
            return sse(envelope.wrap(choices=[choice], **extra))

        for first in self.annotations.first_chunk(envelope, **extra):
            yield first
        for p_index, prompt in enumerate(prompts):
            for n_index in range(self.body.n):
                index = p_index * self.body.n + n_index
                async for piece in self._choice_events(prompt, n_index, index, chunk, usage):
                    yield piece
        if include_usage:
            yield sse(envelope.wrap(choices=[], usage=usage_dict(usage)))

    async def _choice_events(self, prompt, n_index, index, chunk, usage) -> AsyncIterator[str]:
        if self.body.echo:
            logprobs = self._legacy()
            text = await self.echo(prompt, logprobs)
            yield chunk(index, text, logprobs.as_dict() if logprobs else None)
        if not self.body.max_tokens:
            yield chunk(index, "", None, "length")
            return
        async for delta in self.deltas(prompt, n_index, index):
            self.recorder.saw(delta)
            if delta.finish_reason is not None:
                usage.completion_tokens += (delta.usage or Usage()).completion_tokens
                yield chunk(index, "", None, delta.finish_reason)
            else:
                legacy = self._legacy()
                for entry in delta.logprobs or []:
                    legacy.add(entry.token_id, entry)  # type: ignore[union-attr]
                yield chunk(index, delta.text, legacy.as_dict() if legacy else None)
