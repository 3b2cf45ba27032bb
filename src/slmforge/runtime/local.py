"""`LocalEngine`: what PyTorch and ONNX engines share once they can run a forward pass.

A local engine knows its tokenizer, its stop ids, its context length and its adapters; it
renders chats with the model's own template, and turns a forward function into streamed text
(`sampling.sampled_tokens` -> `engine.token_deltas`). Besides chat it offers what an
OpenAI-compatible server needs for `/v1/completions`: generation from raw token ids and the
log-probability of every token of a given sequence (lm-eval's loglikelihood requests).

Subclasses provide `session(adapter, max_length)`, a context manager yielding
`forward(new_ids) -> logits of the last position`, and `sequence_logits(ids, adapter)`. Without
a `batcher` one generation runs at a time (adapters are switched on the shared model); with one
(`runtime/batching.py`, set by engines that can batch), concurrent calls decode together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from slmforge.errors import InputError, ModelError
from slmforge.models.chat import stop_strings
from slmforge.models.tool_format import render_chat
from slmforge.runtime.batching import BatchScheduler
from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Message, measure, token_deltas
from slmforge.runtime.grammar import (
    GrammarConstraint,
    check_grammar,
    grammar_for,
    grammar_tokenizer,
    lark_grammar,
)
from slmforge.runtime.prefix_cache import PrefixCache
from slmforge.runtime.sampling import (
    Sampler,
    TokenLogprob,
    log_softmax,
    sampled_tokens,
    token_logprob,
)
from slmforge.runtime.tool_calls import ToolParser, forced_grammar, parser_for, with_tool_calls

Forward = Callable[[list[int]], np.ndarray]


class ContextLengthError(InputError):
    """The prompt leaves no room in the model's context (HTTP 400 `context_length_exceeded` in
    the server, as OpenAI and vLLM answer)."""


class LocalEngine(BaseEngine):
    tokenizer: Any
    stop_ids: set[int]
    context_length: int
    source: str  # the folder or hub id, for messages
    batcher: BatchScheduler | None = None  # continuous batching, where the engine has it
    prefix_cache: PrefixCache | None = None  # keys and values of shared prompt prefixes

    def _init_local(self, tokenizer: Any, adapters: list[str], eos: Any) -> None:
        self.tokenizer = tokenizer
        self._adapter_names = list(adapters)
        self.stop_ids = set([eos] if isinstance(eos, int) else eos or [])
        vocab = tokenizer.get_vocab()
        self.stop_ids |= {vocab[s] for s in stop_strings(tokenizer) if s in vocab}
        # One generation at a time: adapters are switched on the shared model.
        self._lock = threading.Lock()

    def adapters(self) -> list[str]:
        return list(self._adapter_names)

    def enable_prefix_cache(self, max_bytes: int) -> bool:
        """Keep the keys and values of prompt prefixes (up to `max_bytes`) for reuse; returns
        whether this engine can (each engine that can overrides this)."""
        return False

    def check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapter_names:
            known = ", ".join(self._adapter_names) or "none loaded"
            raise InputError(f"unknown adapter {adapter!r} (known: {known})")

    def prompt_ids(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ModelError(f"{self.source} has no chat template; chat needs one")
        text = render_chat(self.tokenizer, messages, tools, generation_prompt=True)
        # The template writes bos itself where the format has one.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        """Plain text as the tokenizer encodes it by default (bos where the model adds one)."""
        return self.tokenizer(text)["input_ids"]

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def check_room(self, prompt_len: int) -> None:
        if prompt_len >= self.context_length:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens. However, "
                f"your prompt has {prompt_len} tokens, which leaves no room for an answer. "
                "Please reduce the length of the prompt."
            )

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        # Checked here, not inside the stream, so bad requests fail before the first delta.
        self.check_adapter(adapter)
        self.check_params(params)
        prompt = self.prompt_ids(messages, params.tools)
        self.check_room(len(prompt))
        return self._stream(prompt, params, adapter)

    def generate_ids(
        self, prompt: list[int], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        """Continue raw token ids (no chat template), measured like `chat`."""
        self.check_adapter(adapter)
        if not prompt:
            raise InputError("the prompt is empty")
        self.check_room(len(prompt))
        return measure(self._stream(prompt, params, adapter))

    def _stream(self, prompt: list[int], params: GenParams, adapter: str | None) -> Iterator[Delta]:
        room = self.context_length - len(prompt)
        if params.max_tokens > room:  # as llama-server does: shorten, finish_reason says so
            params = params.model_copy(update={"max_tokens": room})
        sampler = Sampler(params, self.constraint(params))
        if params.tools and params.tool_choice != "none":
            deltas = self._deltas(prompt, params, adapter, sampler)
            yield from with_tool_calls(deltas, self.tool_parser)
        else:
            yield from self._deltas(prompt, params, adapter, sampler)

    def _deltas(
        self, prompt: list[int], params: GenParams, adapter: str | None, sampler: Sampler
    ) -> Iterator[Delta]:
        if self.batcher is not None:
            yield from self._stream_batched(self.batcher, prompt, params, adapter, sampler)
            return
        with self._lock, self.session(adapter, len(prompt) + params.max_tokens) as forward:
            tokens = sampled_tokens(forward, prompt, sampler)
            yield from token_deltas(tokens, self.tokenizer, self.stop_ids, params, len(prompt))

    def _stream_batched(
        self,
        batcher: BatchScheduler,
        prompt: list[int],
        params: GenParams,
        adapter: str | None,
        sampler: Sampler,
    ) -> Iterator[Delta]:
        sequence = batcher.submit(prompt, sampler, adapter, params.max_tokens, self.stop_ids)
        try:
            tokens = sequence.tokens()
            yield from token_deltas(tokens, self.tokenizer, self.stop_ids, params, len(prompt))
        finally:  # a stop string or a gone client ends it before the scheduler would
            sequence.cancel()

    @property
    def tool_parser(self) -> ToolParser:
        return parser_for(self.tokenizer)

    def _grammar(self, params: GenParams) -> tuple[str, str] | None:
        """(grammar, the request field it comes from) of a constrained request."""
        if params.tools:
            choice, parallel = params.tool_choice, params.parallel_tool_calls
            lark = forced_grammar(self.tool_parser, params.tools, choice, parallel)
            if lark is not None:
                return lark_grammar(lark), "tool_choice"
        grammar = grammar_for(params)
        return (grammar, "response_format") if grammar is not None else None

    def constraint(self, params: GenParams) -> GrammarConstraint | None:
        """The grammar constraint of a structured-output request or of a forced tool call
        (None for free text)."""
        grammar = self._grammar(params)
        return None if grammar is None else GrammarConstraint(self._grammar_tokenizer(), grammar[0])

    def check_params(self, params: GenParams) -> None:
        """Raise InputError for a request this engine cannot honour (a response schema or tool
        parameters the grammar engine cannot compile), before anything is generated."""
        grammar = self._grammar(params)
        if grammar is not None:
            check_grammar(grammar[0], self._grammar_tokenizer(), grammar[1])

    def _grammar_tokenizer(self) -> Any:
        return grammar_tokenizer(self.tokenizer, len(self.tokenizer), sorted(self.stop_ids))

    def score(self, ids: list[int], adapter: str | None = None, top: int = 0) -> list[Any]:
        """Log-probability of each token given the ones before it (None for the first), with the
        `top` most likely alternatives at each position."""
        self.check_adapter(adapter)
        self.check_room(len(ids) - 1)
        with self._lock:
            logits = self.sequence_logits(ids, adapter)
        scored: list[TokenLogprob | None] = [None]
        for position in range(1, len(ids)):
            logprobs = log_softmax(np.asarray(logits[position - 1], dtype=np.float32))
            scored.append(token_logprob(logprobs, ids[position], top))
        return scored

    def session(self, adapter: str | None, max_length: int) -> AbstractContextManager[Forward]:
        raise NotImplementedError  # each engine overrides it

    def sequence_logits(self, ids: list[int], adapter: str | None) -> Any:
        raise NotImplementedError  # each engine overrides it
