"""Render conversations with tool definitions, tool calls and tool replies through any chat
template.

A template that knows tools (it reads `tools` and `tool_calls`, as Qwen2.5's, Llama 3.1's and
Mistral's hub templates do) gets them through `apply_chat_template(tools=...)`, with call
arguments as objects, as Hugging Face's chat templating expects. A template that does not (many
chat templates, Phi-3's among them) would drop them silently, so the conversation is rewritten
first into plain messages in the Hermes convention that Qwen and NousResearch models use:
the function signatures in the system message inside `<tools></tools>`, each call as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the assistant's text, tool replies
as a user turn of `<tool_response>` blocks. The same convention is what a server parses back
out of such a model's output.

Phi-4-mini's template is a third kind: it reads no `tools` argument but writes a system
message's own `tools` field (a JSON list of function definitions) between `<|tool|>` and
`<|/tool|>`, and the model calls as
`<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`.
Such a template gets its own convention (`phi4_messages`), not the Hermes fallback, so a
fine-tune teaches the syntax the model was trained on.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]

HERMES_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{signatures}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_knows_tools(template: str | None) -> bool:
    """Whether a Jinja chat template renders tool definitions and calls itself."""
    return bool(template) and "tools" in template and "tool_calls" in template


PHI4_TOOLS_SYSTEM = "You are a helpful assistant with some tools."


def template_takes_system_tools(template: str | None) -> bool:
    """Whether a template renders tool definitions from the system message's `tools` field
    (Phi-4-mini's) rather than from a `tools` argument."""
    return bool(template) and any(
        key in template for key in ("message['tools']", 'message["tools"]', "message.tools")
    )


def uses_tools(messages: list[Message], tools: list[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    generation_prompt: bool = False,
) -> str:
    """The conversation as text, tools included whatever the template supports."""
    if uses_tools(messages, tools):
        if template_knows_tools(_template(tokenizer)):
            messages = [_with_object_arguments(m) for m in messages]
            return tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        elif template_takes_system_tools(_template(tokenizer)):
            messages = phi4_messages(messages, tools)
        else:
            messages = hermes_messages(messages, tools)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _template(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one renders chats
        template = template.get("default") or next(iter(template.values()), None)
    return template


def _with_object_arguments(message: Message) -> Message:
    if not message.get("tool_calls"):
        return message
    calls = [
        {**call, "function": {**call["function"], "arguments": _arguments(call)}}
        for call in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


def _arguments(call: dict[str, Any]) -> Any:
    arguments = call["function"]["arguments"]
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return arguments  # rendered as written; validation reports it elsewhere


def hermes_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """Plain system/user/assistant messages carrying tools in the Hermes convention."""
    out: list[Message] = []
    if tools:
        signatures = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        prompt = HERMES_TOOLS_PROMPT.format(signatures=signatures)
        if messages and messages[0]["role"] == "system":
            prompt = f"{messages[0]['content']}\n\n{prompt}"
            messages = messages[1:]
        out.append({"role": "system", "content": prompt})
    for message in messages:
        if message["role"] == "tool":
            reply = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_replies"):
                out[-1]["content"] += "\n" + reply  # replies in a row share one user turn
            else:
                out.append({"role": "user", "content": reply, "_replies": True})
        elif message.get("tool_calls"):
            out.append({"role": "assistant", "content": hermes_call_text(message)})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    return [{k: v for k, v in m.items() if k != "_replies"} for m in out]


def hermes_call_text(message: Message) -> str:
    """An assistant message's text followed by its calls as `<tool_call>` blocks."""
    blocks = [
        "<tool_call>\n"
        + json.dumps(
            {"name": call["function"]["name"], "arguments": _arguments(call)}, ensure_ascii=False
        )
        + "\n</tool_call>"
        for call in message["tool_calls"]
    ]
    return "\n".join([message["content"], *blocks] if message["content"] else blocks)


def phi4_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """Messages in Phi-4-mini's convention: the function definitions as a JSON string in the
    system message's `tools` field (a default system message when there is none), each call as
    a `<|tool_call|>[...]<|/tool_call|>` list after the assistant's text, tool replies as the
    template's own `tool` turns."""
    out: list[Message] = []
    rest = messages
    if tools:
        system = PHI4_TOOLS_SYSTEM
        if messages and messages[0]["role"] == "system":
            system, rest = messages[0]["content"], messages[1:]
        signatures = json.dumps([t["function"] for t in tools], ensure_ascii=False)
        out.append({"role": "system", "content": system, "tools": signatures})
    for message in rest:
        if message.get("tool_calls"):
            out.append({"role": "assistant", "content": phi4_call_text(message)})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    return out


def phi4_call_text(message: Message) -> str:
    """An assistant message's text followed by its calls as one `<|tool_call|>` JSON list."""
    calls = [
        {"name": call["function"]["name"], "arguments": _arguments(call)}
        for call in message["tool_calls"]
    ]
    block = "<|tool_call|>" + json.dumps(calls, ensure_ascii=False) + "<|/tool_call|>"
    return message["content"] + block
