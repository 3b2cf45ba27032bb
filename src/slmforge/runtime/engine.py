"""The one generation interface used by serve, eval and app.

Engines (`TorchEngine`, `OnnxEngine`, `RemoteEngine`) implement `generate`, which streams text
deltas and ends with one delta carrying `finish_reason` and token `usage`. `BaseEngine.chat`
wraps that stream with `measure`, so time to first token, inter-token latency and tokens/s are
measured in one place for every engine. Local engines yield one delta per sampled token (its
text may be empty: a byte-fallback piece, a special token or an id past the tokenizer decodes to
nothing), so the first token is timed when it is sampled, not when text first appears; `measure`
drops the empty ones, so consumers see text deltas only. Remote engines see text chunks only and
are timed by them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import Field

from slmforge.config import StrictModel

# {"role": "system" | "user" | "assistant" | "tool", "content": "..."}; an assistant message may
# carry OpenAI's `tool_calls`, a tool message its `tool_call_id`
Message = dict[str, Any]


class GenParams(StrictModel):
    """Sampling options; temperature 0 means greedy."""

    max_tokens: int = Field(256, gt=0, description="Most new tokens to generate.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off.")
    seed: int | None = Field(None, description="Seed for sampling.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")
    logprobs: bool = Field(False, description="Report each generated token's log-probability.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Most likely alternatives per token.")
    json_mode: bool = Field(False, description="Constrain the reply to one JSON object.")
    tools: list[dict[str, Any]] | None = Field(
        None, description="Functions the model may call ({type: function, function: {...}})."
    )
    tool_choice: str | dict[str, Any] = Field(
        "auto",
        description="none, auto, required, or {type: function, function: {name}}: whether and "
        "which function the reply must call.",
    )
    parallel_tool_calls: bool = Field(True, description="Allow several calls in one reply.")
    json_schema: dict[str, Any] | None = Field(
        None,
        description="OpenAI's `response_format.json_schema` ({name, schema, strict}): the reply "
        "is one JSON value matching `schema`.",
    )


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    ttft_s: float | None = None  # time to the first token (remote engines: the first text)
    total_s: float = 0.0
    tokens_per_s: float | None = None  # decode rate after the first token
    inter_token_s: float | None = None  # mean gap between tokens after the first (remote: chunks)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's `function.arguments`)


@dataclass
class Delta:
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" on the final delta
    usage: Usage | None = None
    timings: Timings | None = None
    logprobs: list[Any] | None = None  # sampling.TokenLogprob of the tokens in this delta
    tokens: int = 0  # tokens sampled since the last delta (local engines); 0 where unknown
    tool_calls: list[ToolCall] | None = None  # whole calls, each once


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    tool_calls: list[ToolCall] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def chat(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]: ...

    def adapters(self) -> list[str]: ...


def measure(stream: Iterator[Delta]) -> Iterator[Delta]:
    """Pass text deltas through and attach `Timings` to the final one.

    Time is stamped per token where the engine reports tokens (`Delta.tokens`), else per text
    chunk; deltas with neither text nor logprobs only mark time and are not passed on."""
    start = time.perf_counter()
    first: float | None = None
    last = start
    ticks = 0  # tokens (or text chunks) seen
    counts_tokens = False
    final: Delta | None = None
    for delta in stream:
        now = time.perf_counter()
        counts_tokens = counts_tokens or delta.tokens > 0
        # A local engine's closing text (held back by a stop-string check) is no new token.
        if delta.tokens > 0 or (delta.text and not counts_tokens):
            first = now if first is None else first
            last, ticks = now, ticks + max(delta.tokens, 1)
        if delta.finish_reason is not None or delta.usage is not None:
            final = delta
        elif delta.text or delta.logprobs or delta.tool_calls:
            yield delta
    end = time.perf_counter()
    final = final or Delta(finish_reason="stop")
    usage = final.usage or Usage()
    decode_s = end - first if first is not None else 0.0
    decoded = max(usage.completion_tokens - 1, 0)
    final.timings = Timings(
        ttft_s=None if first is None else first - start,
        total_s=end - start,
        tokens_per_s=decoded / decode_s if decode_s > 0 and decoded else None,
        inter_token_s=(last - first) / (ticks - 1) if first is not None and ticks > 1 else None,
    )
    yield final


class BaseEngine:
    """Shared `chat` for engines: subclasses implement `generate` and `adapters`."""

    name = "engine"

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        raise NotImplementedError  # the abstract hook; every engine overrides it

    def adapters(self) -> list[str]:
        return []

    def chat(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        return measure(self.generate(messages, params, adapter))


def complete(
    engine: Engine, messages: list[Message], params: GenParams, adapter: str | None = None
) -> Completion:
    """Run one chat to the end and collect it."""
    parts: list[str] = []
    calls: list[ToolCall] = []
    final = Delta()
    for delta in engine.chat(messages, params, adapter):
        parts.append(delta.text)
        calls.extend(delta.tool_calls or [])
        if delta.finish_reason is not None or delta.timings is not None:
            final = delta
    return Completion(
        text="".join(parts),
        finish_reason=final.finish_reason,
        usage=final.usage or Usage(),
        timings=final.timings or Timings(),
        tool_calls=calls,
    )


class StopStringFilter:
    """Hold back text that may be the start of a stop string; cut at the first full match.

    Local engines decode token by token, and a stop string can span several tokens, so text is
    released only once it can no longer be part of a stop string.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = max((len(s) - 1 for s in self.stops), default=0)
        keep = next(
            (
                k
                for k in range(min(keep, len(self.pending)), 0, -1)
                if any(s.startswith(self.pending[-k:]) for s in self.stops)
            ),
            0,
        )
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait
            return ""
        delta, self.emitted = text[self.emitted :], len(text)
        return delta


def token_deltas(
    tokens: Iterator[Any],
    tokenizer: Any,
    stop_ids: set[int],
    params: GenParams,
    prompt_tokens: int,
) -> Iterator[Delta]:
    """One delta per token a local engine samples (`sampling.Sampled`), with the text it
    releases (often empty: text is held back for a stop string or a split character, and some
    tokens decode to nothing), cut at a stop token, a stop string, the end of a JSON object or
    `max_tokens`, then the final delta with finish_reason and usage (shared by local engines).
    With `params.logprobs` each text delta carries the log-probabilities of the tokens whose text
    it releases."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    stops = StopStringFilter(params.stop)
    finish, completion = "length", 0
    pending: list[Any] = []  # logprobs of tokens whose text is not yet released
    for sampled in tokens:
        completion += 1
        if sampled.token_id in stop_ids:
            yield Delta(tokens=1)  # counted and timed like any token, never shown
            finish = "stop"
            break
        if sampled.logprob is not None:
            pending.append(sampled.logprob)
        text = stops.feed(detokenizer.add(sampled.token_id))
        yield Delta(text=text, logprobs=(pending or None) if text else None, tokens=1)
        if text:
            pending = []
        if stops.stopped or sampled.ends:
            finish = "stop"
            break
        if completion >= params.max_tokens:
            break
    rest = stops.flush()
    if rest or pending:
        yield Delta(text=rest, logprobs=pending or None)
    yield Delta(finish_reason=finish, usage=Usage(prompt_tokens, completion))
