"""The OpenAI API's request and response models (and vLLM's tokenizer endpoints'), kept apart
from the logic (the `serving_*` modules) as vLLM's `entrypoints/openai/protocol.py` keeps them.

Requests are validated as strictly as the real service validates them, and each turns itself
into the engine's `GenParams` (`to_gen_params`). Unknown fields are errors (the OpenAI API
answers "Unrecognized request argument"). Fields a local engine cannot honour but clients
routinely send (penalties, `logit_bias`, `user`, `metadata`, `store`, ...) are accepted and
ignored, because judge and evaluation libraries send them on every request. Fields whose meaning
we would silently change (`suffix`, `best_of` > n, image content) are rejected with a message
naming them. Function calling lives in `protocol_tools.py`.

Responses and stream chunks are models too, serialised as the OpenAI API serialises them: a
field listed in `optional_fields` appears only when it was set (`usage` on a chunk only with
`include_usage`, filter results only with a content filter), every other field always, `null`
included, because clients tell "absent" from `null`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from slmforge.http.errors import APIError
from slmforge.http.ids import new_id
from slmforge.runtime.engine import GenParams, Usage
from slmforge.serve.protocol_base import OpenAIObject
from slmforge.serve.protocol_base import Strict as _Strict
from slmforge.serve.protocol_tools import (
    DeltaToolCall,
    RequestToolCall,
    ToolCallObject,
    ToolFields,
    check_tool_replies,
    request_tool_calls,
)

MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 4
FINGERPRINT = "fp_slmforge"


class ContentPart(BaseModel):
    """Any content part; only text can be used by a text model."""

    model_config = ConfigDict(extra="allow")
    type: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[RequestToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # the call a tool message answers

    @model_validator(mode="after")
    def _parts_fit_the_role(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (null only for an assistant turn with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only an assistant message calls tools")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool_call_id: required in a tool message")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for index, part in enumerate(self.content):
            if part.type != "text" or not isinstance(getattr(part, "text", None), str):
                raise ValueError(
                    f"content[{index}]: only text parts are supported (got {part.type!r})"
                )
            texts.append(part.text)  # type: ignore[attr-defined]
        return "".join(texts)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates take it; `developer` is the newer `system`."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.tool_calls:
            message["tool_calls"] = request_tool_calls(self.tool_calls)
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class JsonSchemaFormat(_Strict):
    """OpenAI's `response_format.json_schema`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required when type is json_schema")
        return self


Stop = StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP_SEQUENCES)] | None


class _Sampling(_Strict):
    """Fields shared by chat and text completions."""

    model: str
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Stop = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    top_k: StrictInt | None = Field(None, ge=-1, description="vLLM's extension; -1 or 0 = off.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Accepted and ignored: a local engine has no use for them, but clients send them.
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def _gen_params(self, max_tokens: int, **extra: Any) -> GenParams:
        top_p = self.top_p if self.top_p is not None else 1.0
        temperature = self.temperature if self.temperature is not None else 1.0
        if top_p == 0:  # nucleus of probability 0 = the top token only
            temperature = 0.0
        return GenParams(
            max_tokens=max(max_tokens, 1),
            temperature=temperature,
            top_p=max(top_p, 1e-6),
            seed=self.seed,
            top_k=max(self.top_k or 0, 0),
            stop=self.stop_list(),
            **extra,
        )

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def capped_max_tokens(requested: int | None, param: str, cap: int) -> int:
    """The request's token budget, or the server's cap when it names none; over the cap is a
    400 naming the field the client used."""
    if requested is not None and requested > cap:
        raise APIError(
            400,
            f"{param} is too large: {requested}; this server allows at most {cap}.",
            param=param,
            code="invalid_value",
        )
    return requested if requested is not None else cap


class ChatCompletionRequest(_Sampling, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    # Accepted and ignored, as above.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        for index, message in enumerate(self.messages):
            try:
                message.text()
            except ValueError as exc:
                raise ValueError(f"messages[{index}].{exc}") from None
        check_tool_replies(self.messages)
        return self

    def chat_messages(self) -> list[dict[str, Any]]:
        return [m.for_template() for m in self.messages]

    def to_gen_params(self, max_tokens_cap: int) -> GenParams:
        param = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
        requested = self.max_completion_tokens or self.max_tokens
        kind = self.response_format.type if self.response_format else "text"
        schema = self.response_format.json_schema if self.response_format else None
        return self._gen_params(
            capped_max_tokens(requested, param, max_tokens_cap),
            logprobs=bool(self.logprobs),
            top_logprobs=self.top_logprobs or 0,
            json_mode=kind == "json_object",
            json_schema=schema.model_dump(by_alias=True, exclude_none=True) if schema else None,
            **self.tool_options(),
        )


TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Prompt = StrictStr | TokenIds | Annotated[list[StrictStr], Field(min_length=1)]
PromptBatch = Annotated[list[TokenIds], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: Prompt | PromptBatch
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix: insertion after a suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of equal to n is supported")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: must be at least 1 unless echo is true")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def to_gen_params(self, max_tokens_cap: int) -> GenParams:
        max_tokens = capped_max_tokens(self.max_tokens, "max_tokens", max_tokens_cap)
        return self._gen_params(
            max_tokens, logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0
        )


class TokenizeRequest(_Strict):
    """vLLM's `/tokenize` (lm-eval reads the tokenizer from the server through it)."""

    model: str | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[StrictInt]


# -- responses ------------------------------------------------------------------------------


def response_head(id_prefix: str, model: str) -> dict[str, Any]:
    """The id, creation time and model that every object (or chunk) of one response shares."""
    return {"id": new_id(id_prefix), "created": int(time.time()), "model": model}


class UsageInfo(OpenAIObject):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageInfo:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class PromptFilterResult(OpenAIObject):
    """Azure OpenAI's content filter results of one prompt."""

    prompt_index: int
    content_filter_results: dict[str, Any]


class _Response(OpenAIObject):
    optional_fields = frozenset({"usage", "prompt_filter_results", "slmforge_route"})

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    choices: list[Any]  # each kind narrows it; declared here to keep OpenAI's field order
    usage: UsageInfo | None = None
    prompt_filter_results: list[PromptFilterResult] | None = None
    slmforge_route: dict[str, Any] | None = None  # serve --route: the router's decision


class _Choice(OpenAIObject):
    optional_fields = frozenset({"content_filter_results"})
    # each kind declares `content_filter_results: FilterResults = None` (Azure's, with a
    # content filter) as its last field, where OpenAI's field order has it


FilterResults = dict[str, Any] | None


# -- chat completions -----------------------------------------------------------------------


class ChatLogprob(OpenAIObject):
    token: str
    logprob: float
    bytes: list[int]

    @classmethod
    def of(cls, text: str, logprob: float) -> ChatLogprob:
        return cls(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


class ChatLogprobEntry(ChatLogprob):
    top_logprobs: list[ChatLogprob]


class ChatLogprobs(OpenAIObject):
    content: list[ChatLogprobEntry]
    refusal: str | None = None

    @classmethod
    def of(cls, entries: list[Any], token_text: Any) -> ChatLogprobs:
        """`sampling.TokenLogprob`s, with `token_text(id)` for each token's text."""
        content = []
        for entry in entries:
            text = token_text(entry.token_id)
            top = [ChatLogprob.of(token_text(i), lp) for i, lp in entry.top]
            content.append(
                ChatLogprobEntry(
                    token=text,
                    logprob=entry.logprob,
                    bytes=list(text.encode("utf-8")),
                    top_logprobs=top,
                )
            )
        return cls(content=content)


class AssistantMessage(OpenAIObject):
    optional_fields = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallObject] | None = None


class ChatChoice(_Choice):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    content_filter_results: FilterResults = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class DeltaMessage(OpenAIObject):
    optional_fields = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(_Choice):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    content_filter_results: FilterResults = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


# -- text completions (the legacy log-probabilities lm-eval reads) --------------------------


class CompletionLogprobs(OpenAIObject):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Choice):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    content_filter_results: FilterResults = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


# -- models and tokenizer -------------------------------------------------------------------


class ModelCard(OpenAIObject):
    optional_fields = frozenset({"parent"})

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "slmforge"
    parent: str | None = None  # an adapter's base
    root: str


class ModelList(OpenAIObject):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizerInfo(OpenAIObject):
    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    chat_template: str | dict[str, Any] | list[Any] | None
    model_max_length: int
    vocab_size: int


class TokenizeResponse(OpenAIObject):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(OpenAIObject):
    prompt: str
