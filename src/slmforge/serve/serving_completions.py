"""`/v1/completions`: text completions of one or more prompts (strings or token ids), `n`
choices each, with `echo` and the legacy log-probabilities that lm-eval scores with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from slmforge.http.errors import APIError
from slmforge.runtime.engine import Delta, Usage
from slmforge.runtime.local import ContextLengthError
from slmforge.serve.app import ServerState
from slmforge.serve.generation import (
    ChoiceResult,
    Recorder,
    choice_params,
    collect,
    engine_deltas,
)
from slmforge.serve.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    response_head,
)
from slmforge.serve.serving import Annotations, Chunks, context_error, respond


def prompt_ids(engine: Any, prompt: str | list[int], index: int, many: bool) -> list[int]:
    """A prompt's token ids; an empty prompt or an id outside the vocabulary is a 400."""
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


async def create_completion(state: ServerState, body: CompletionRequest, request: Request) -> Any:
    engine = state.ready().engine
    adapter = state.adapter_for(body.model)
    raw = body.prompts()
    prompts = [prompt_ids(engine, p, i, len(raw) > 1) for i, p in enumerate(raw)]
    for ids in prompts:
        try:
            engine.check_room(len(ids))
        except ContextLengthError as exc:
            raise context_error(exc, "prompt") from None
    verdicts = [
        state.check_input([{"role": "user", "content": engine.tokenizer.decode(p)}])
        for p in prompts
    ]
    params = body.to_gen_params(state.config.max_tokens_cap)
    recorder = Recorder(state.metrics, "completions", body.model)
    recorder.prompt(sum(len(p) for p in prompts))
    run = _CompletionRun(engine, prompts, params, adapter, body, recorder)
    run.annotations = Annotations(state, verdicts)
    return await respond(state, request, bool(body.stream), run)


class LegacyLogprobs:
    """Accumulates the legacy `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`."""

    def __init__(self, token_text: Any, top: int) -> None:
        self.token_text = token_text
        self.top = top
        self.logprobs = CompletionLogprobs()
        self.offset = 0

    def add(self, token_id: int, entry: Any | None) -> None:
        text = self.token_text(token_id)
        self.logprobs.tokens.append(text)
        self.logprobs.text_offset.append(self.offset)
        self.offset += len(text)
        if entry is None:  # the first prompt token has no context to be predicted from
            self.logprobs.token_logprobs.append(None)
            self.logprobs.top_logprobs.append(None)
            return
        self.logprobs.token_logprobs.append(entry.logprob)
        alternatives: dict[str, float] = {}
        for alt_id, logprob in entry.top[: self.top]:
            alt = self.token_text(alt_id)
            alternatives[alt] = max(logprob, alternatives.get(alt, float("-inf")))
        self.logprobs.top_logprobs.append(alternatives)


class _CompletionRun:
    annotations: Annotations

    def __init__(self, engine, prompts, params, adapter, body, recorder) -> None:
        self.engine, self.prompts, self.params, self.adapter = engine, prompts, params, adapter
        self.body: CompletionRequest = body
        self.recorder: Recorder = recorder

    def choices(self) -> list[tuple[list[int], int, int]]:
        """(prompt, its choice number, index in the response) for each prompt x `n`."""
        n = self.body.n
        return [(p, k, i * n + k) for i, p in enumerate(self.prompts) for k in range(n)]

    async def echo(self, prompt: list[int], logprobs: LegacyLogprobs | None) -> str:
        """The prompt's text, and its tokens' log-probabilities when asked for."""
        if logprobs is not None:
            scored = await asyncio.to_thread(
                self.engine.score, prompt, self.adapter, self.body.logprobs or 0
            )
            for token_id, entry in zip(prompt, scored, strict=True):
                logprobs.add(token_id, entry)
        return self.engine.tokenizer.decode(prompt)

    def deltas(self, prompt: list[int], index: int, choice: int) -> AsyncIterator[Delta]:
        params = choice_params(self.params, index)
        stream = engine_deltas(self.engine, prompt, params, self.adapter)
        return self.annotations.screen(stream, choice)

    def _legacy(self) -> LegacyLogprobs | None:
        if self.body.logprobs is None:
            return None
        return LegacyLogprobs(self.engine.token_text, self.body.logprobs)

    async def one(self, prompt: list[int], index: int, choice: int) -> tuple[Any, Usage]:
        logprobs = self._legacy()
        text = await self.echo(prompt, logprobs) if self.body.echo else ""
        result = ChoiceResult(finish_reason="length")
        if self.body.max_tokens:
            result = await collect(self.deltas(prompt, index, choice), self.recorder)
        if logprobs is not None:
            for entry in result.logprobs:
                logprobs.add(entry.token_id, entry)
        body = CompletionChoice(
            index=choice,
            text=text + result.text,
            logprobs=logprobs.logprobs if logprobs is not None else None,
            finish_reason=result.finish_reason,
            **self.annotations.choice(choice),
        )
        return body, result.usage

    async def whole(self) -> CompletionResponse:
        choices, usage = [], Usage(prompt_tokens=sum(len(p) for p in self.prompts))
        for prompt, n_index, index in self.choices():
            choice, choice_usage = await self.one(prompt, n_index, index)
            choices.append(choice)
            usage.completion_tokens += choice_usage.completion_tokens
        self.recorder.done()
        return CompletionResponse(
            **response_head("cmpl-", self.body.model),
            choices=choices,
            usage=UsageInfo.of(usage),
            **self.annotations.prompt,
        )

    async def events(self) -> AsyncIterator[str]:
        # stream chunks have the shape of the whole response (OpenAI's, too)
        head = response_head("cmpl-", self.body.model)
        chunks = Chunks(CompletionResponse, head, self.body.include_usage())
        usage = Usage(prompt_tokens=sum(len(p) for p in self.prompts))
        for first in self.annotations.first_chunk(chunks):
            yield first
        for prompt, n_index, index in self.choices():
            async for piece in self._choice_events(chunks, prompt, n_index, index, usage):
                yield piece
        for chunk in chunks.usage(usage):
            yield chunk

    def _chunk(
        self, chunks: Chunks, index: int, text: str, logprobs: Any = None, finish: Any = None
    ) -> str:
        fields = self.annotations.choice(index) if finish is not None else {}
        choice = CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=finish, **fields
        )
        return chunks.chunk([choice])

    async def _choice_events(self, chunks, prompt, n_index, index, usage) -> AsyncIterator[str]:
        if self.body.echo:
            legacy = self._legacy()
            text = await self.echo(prompt, legacy)
            yield self._chunk(chunks, index, text, legacy.logprobs if legacy else None)
        if not self.body.max_tokens:
            yield self._chunk(chunks, index, "", None, "length")
            return
        async for delta in self.deltas(prompt, n_index, index):
            self.recorder.saw(delta)
            if delta.finish_reason is not None:
                usage.completion_tokens += (delta.usage or Usage()).completion_tokens
                yield self._chunk(chunks, index, "", None, delta.finish_reason)
            else:
                legacy = self._legacy()
                for entry in delta.logprobs or []:
                    legacy.add(entry.token_id, entry)  # type: ignore[union-attr]
                yield self._chunk(chunks, index, delta.text, legacy.logprobs if legacy else None)
