"""Response objects of the OpenAI API, built from the engines' deltas and token log-probs."""

from __future__ import annotations

import json
import time
from typing import Any

from slmforge.http.ids import new_id
from slmforge.runtime.engine import Usage

FINGERPRINT = "fp_slmforge"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def sse(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


class Envelope:
    """The fields every object of one response shares."""

    def __init__(self, kind: str, model: str) -> None:
        self.id = new_id("chatcmpl-" if kind.startswith("chat") else "cmpl-")
        self.object = kind
        self.model = model
        self.created = int(time.time())

    def wrap(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            **fields,
        }


# -- chat log-probabilities: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]} -----


def _token_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(entries: list[Any], token_text: Any) -> list[dict[str, Any]]:
    """`sampling.TokenLogprob`s -> the chat API's `logprobs.content` list."""
    content = []
    for entry in entries:
        item = _token_entry(token_text(entry.token_id), entry.logprob)
        item["top_logprobs"] = [_token_entry(token_text(i), lp) for i, lp in entry.top]
        content.append(item)
    return content


# -- text completion log-probabilities (the legacy shape lm-eval reads) ---------------------


class LegacyLogprobs:
    """Accumulates `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`."""

    def __init__(self, token_text: Any, top: int) -> None:
        self.token_text = token_text
        self.top = top
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.offset = 0

    def add(self, token_id: int, entry: Any | None) -> None:
        text = self.token_text(token_id)
        self.tokens.append(text)
        self.text_offset.append(self.offset)
        self.offset += len(text)
        if entry is None:  # the first prompt token has no context to be predicted from
            self.token_logprobs.append(None)
            self.top_logprobs.append(None)
            return
        self.token_logprobs.append(entry.logprob)
        alternatives: dict[str, float] = {}
        for alt_id, logprob in entry.top[: self.top]:
            alt = self.token_text(alt_id)
            alternatives[alt] = max(logprob, alternatives.get(alt, float("-inf")))
        self.top_logprobs.append(alternatives)

    def slice_from(self, start: int) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }

    def as_dict(self) -> dict[str, Any]:
        return self.slice_from(0)
