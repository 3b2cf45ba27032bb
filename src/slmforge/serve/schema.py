"""Request bodies of the OpenAI API, validated as strictly as the real service validates them.

Unknown fields are errors (the OpenAI API answers "Unrecognized request argument"). Fields a
local engine cannot honour but clients routinely send (penalties, `logit_bias`, `user`,
`metadata`, `store`, ...) are accepted and ignored, because judge and evaluation libraries send
them on every request. Fields whose meaning we would silently change (`tools`, `suffix`,
`best_of` > n, image content) are rejected with a message naming them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ContentPart(BaseModel):
    """Any content part; only text can be used by a text model."""

    model_config = ConfigDict(extra="allow")
    type: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None
    refusal: str | None = None

    def text(self) -> str:
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


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


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


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
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
        if self.tools:
            raise ValueError("tools: tool calling is not supported by this server")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.response_format is not None and self.response_format.type == "json_schema":
            raise ValueError(
                "response_format: json_schema is not supported; use {'type': 'json_object'}"
            )
        for index, message in enumerate(self.messages):
            try:
                message.text()
            except ValueError as exc:
                raise ValueError(f"messages[{index}].{exc}") from None
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template takes them; `developer` is the newer `system`."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


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
