"""Lenient parsing of teacher replies: code fences, text around the JSON, numbered lines."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_TEXT_CHARS = 4000
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


# -- parsing teacher replies -------------------------------------------------------------------
def parse_strings(reply: str) -> list[str]:
    """The strings of the JSON array in a reply (code fences and text around it allowed;
    objects with a "text"/"prompt"/"paraphrase" string count too), or its non-empty lines."""
    fenced = _FENCE.search(reply)
    body = fenced.group(1) if fenced else reply
    start = body.find("[")
    items: list[Any] = []
    if start >= 0:
        decoder = json.JSONDecoder()
        pos = start + 1
        while pos < len(body):
            while pos < len(body) and body[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(body) or body[pos] == "]":
                break
            try:
                value, pos = decoder.raw_decode(body, pos)
            except json.JSONDecodeError:
                break
            items.append(value)
    else:
        items = [re.sub(r"^\s*(?:[-*]|\d+[.)])\s*", "", line) for line in body.splitlines()]
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = next((item[k] for k in ("text", "prompt", "paraphrase") if k in item), None)
        if isinstance(item, str) and item.strip() and len(item) <= MAX_TEXT_CHARS:
            texts.append(item.strip())
    return texts


def parse_turn(reply: str) -> tuple[str, str] | None:
    """(user, assistant) from a `{"user": ..., "assistant": ...}` reply, or None."""
    fenced = _FENCE.search(reply)
    body = fenced.group(1) if fenced else reply
    start = body.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(body, start)
    except json.JSONDecodeError:
        return None
    user, assistant = value.get("user"), value.get("assistant")
    if not (isinstance(user, str) and isinstance(assistant, str)):
        return None
    user, assistant = user.strip(), assistant.strip()
    if not user or not assistant or max(len(user), len(assistant)) > MAX_TEXT_CHARS:
        return None
    return user, assistant
