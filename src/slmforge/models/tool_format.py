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
