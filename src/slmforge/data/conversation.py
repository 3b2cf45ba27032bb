"""Conversation rules: what makes converted messages a usable training example.

Each rule sees the messages of one example (and its tool definitions) and yields
(field, message, rule name) for what is wrong; the reader turns those into findings with the
file and line. A new rule is one function with `@conversation_rule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from slmforge.data.tools import check_calls

Messages = list[dict[str, Any]]
ConversationRule = Callable[
    [Messages, "list[dict[str, Any]] | None"], Iterable[tuple[str, str, str]]
]
CONVERSATION_RULES: list[ConversationRule] = []


def conversation_rule(fn: ConversationRule) -> ConversationRule:
    CONVERSATION_RULES.append(fn)
    return fn


def _next_roles(message: dict[str, Any]) -> tuple[str, ...]:
    """Which roles may follow `message`: a user turn gets an answer, an answer that calls tools
    gets their replies, replies get more replies or the answer that reads them."""
    if message["role"] == "user":
        return ("assistant",)
    if message["role"] == "assistant":
        return ("tool",) if message.get("tool_calls") else ("user",)
    return ("tool", "assistant")


def _a(words: str) -> str:
    return f"an {words}" if words.startswith("assistant") else f"a {words}"


@conversation_rule
def _role_order(messages: Messages, tools: list[dict[str, Any]] | None):
    expected: tuple[str, ...] = ("user",)
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if i != 0:
                yield f"messages[{i}].role", "a system message may only come first", "role_order"
            continue
        if role not in expected:
            yield (
                f"messages[{i}].role",
                f"expected {_a(' or '.join(expected))} message here, got {role} (user and "
                "assistant turns alternate, starting with user; tool replies follow the "
                "assistant message that calls the tools)",
                "role_order",
            )
            return
        expected = _next_roles(message)


@conversation_rule
def _ends_with_assistant(messages: Messages, tools: list[dict[str, Any]] | None):
    if not any(m["role"] == "assistant" for m in messages):
        yield "messages", "no assistant message (nothing to learn from)", "no_assistant"
    elif messages[-1]["role"] != "assistant":
        yield (
            f"messages[{len(messages) - 1}]",
            "the conversation must end with an assistant turn",
            "last_not_assistant",
        )


@conversation_rule
def _tool_calls_match_declarations(messages: Messages, tools: list[dict[str, Any]] | None):
    yield from check_calls(messages, tools)
