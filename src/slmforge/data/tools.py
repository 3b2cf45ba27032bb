"""Function calling in chat examples: tool definitions, assistant tool calls and tool replies.

The internal shape is OpenAI's fine-tuning format, whatever the file held: an example's `tools`
is a list of `{"type": "function", "function": {"name", "description", "parameters"}}`; an
assistant message may carry `tool_calls` (`[{"id", "type": "function", "function": {"name",
"arguments"}}]`, arguments a JSON string) with `content` "" when it only calls; a `tool`
message answers one call (`tool_call_id`, `content`). Readers here report every problem
through the caller's `Reporter` (file and line are the caller's; fields are as in the file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names


class Reporter(Protocol):
    def add(self, field_name: str | None, message: str, rule: str) -> None: ...


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# -- tool definitions ----------------------------------------------------------------------------
def parse_tools(value: Any, label: str, at: Reporter) -> list[dict[str, Any]] | None:
    """The record's tool list, normalized to OpenAI's shape; None after reporting a problem.

    Accepts OpenAI's `tools` (`{"type": "function", "function": {...}}`), bare function objects
    (the older `functions` field, LLaMA-Factory's `tools`) and a JSON string holding either."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            at.add(label, f"not valid JSON ({exc.msg} at character {exc.pos})", "tool_schema")
            return None
    if not isinstance(value, list):
        at.add(label, f"expected a list of function definitions, got {_kind(value)}", "wrong_type")
        return None
    tools, names = [], set()
    for i, item in enumerate(value):
        where = f"{label}[{i}]"
        function = item.get("function") if isinstance(item, dict) and "function" in item else item
        if isinstance(item, dict) and item.get("type", "function") != "function":
            at.add(
                f"{where}.type",
                f"unknown tool type {item['type']!r} (expected function)",
                "tool_schema",
            )
            continue
        definition = _function_definition(function, where, at)
        if definition is None:
            continue
        if definition["name"] in names:
            at.add(
                f"{where}.name", f"function {definition['name']!r} is declared twice", "tool_schema"
            )
            continue
        names.add(definition["name"])
        tools.append({"type": "function", "function": definition})
    return tools if len(tools) == len(value) else None


def _function_definition(function: Any, where: str, at: Reporter) -> dict[str, Any] | None:
    from jsonschema import SchemaError, validators

    if not isinstance(function, dict):
        at.add(where, f"expected a function definition object, got {_kind(function)}", "wrong_type")
        return None
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        at.add(
            f"{where}.name",
            f"expected a function name of letters, digits, _ . - (up to 64), got {name!r}",
            "tool_schema",
        )
        return None
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        at.add(
            f"{where}.parameters",
            f"expected a JSON schema object, got {_kind(parameters)}",
            "tool_schema",
        )
        return None
    try:
        validators.validator_for(parameters).check_schema(parameters)
    except SchemaError as exc:
        at.add(f"{where}.parameters", f"not a valid JSON schema: {exc.message}", "tool_schema")
        return None
    definition = {"name": name, "parameters": parameters}
    if isinstance(function.get("description"), str):
        definition["description"] = function["description"]
    return definition


# -- tool calls ----------------------------------------------------------------------------------
def parse_tool_calls(value: Any, label: str, at: Reporter) -> list[dict[str, Any]] | None:
    """An assistant message's `tool_calls`, normalized (arguments as a JSON string; an id
    assigned where the file has none); None after reporting a problem."""
    if not isinstance(value, list) or not value:
        at.add(label, f"expected a non-empty list of tool calls, got {_kind(value)}", "wrong_type")
        return None
    calls = []
    for i, item in enumerate(value):
        call = _tool_call(item, f"{label}[{i}]", at)
        if call is None:
            return None
        calls.append(call)
    return calls


def _tool_call(item: Any, where: str, at: Reporter) -> dict[str, Any] | None:
    function = item.get("function") if isinstance(item, dict) else None
    if not isinstance(function, dict):
        at.add(f"{where}.function", "expected an object with name and arguments", "wrong_type")
        return None
    name, arguments = function.get("name"), function.get("arguments", "{}")
    if not isinstance(name, str) or not name:
        at.add(f"{where}.function.name", "missing function name", "missing_field")
        return None
    if isinstance(arguments, dict):  # some datasets store the object itself
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        at.add(
            f"{where}.function.arguments",
            f"expected a JSON string, got {_kind(arguments)}",
            "wrong_type",
        )
        return None
    call_id = item.get("id")
    if call_id is not None and not isinstance(call_id, str):
        at.add(f"{where}.id", f"expected a string, got {_kind(call_id)}", "wrong_type")
        return None
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assign_call_ids(messages: list[dict[str, Any]], line: int | None) -> None:
    """Give calls without an id a stable one (`call_L<line>_<n>`), and a tool reply without
    `tool_call_id` the id of the call it answers in order, so every reply names its call."""
    pending: list[str] = []
    count = 0
    for message in messages:
        for call in message.get("tool_calls") or []:
            if call["id"] is None:
                call["id"] = f"call_L{line or 0}_{count}"
            count += 1
            pending.append(call["id"])
        if message["role"] == "tool":
            if message.get("tool_call_id") is None and pending:
                message["tool_call_id"] = pending[0]
            if message.get("tool_call_id") in pending:
                pending.remove(message["tool_call_id"])


# -- checks against the declared functions --------------------------------------------------------
def check_calls(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> Iterable[tuple[str, str, str]]:
    """(field, message, rule) for each call that names an undeclared function or whose
    arguments do not parse or match the function's parameter schema, and for each tool reply
    that answers no call."""
    declared = {t["function"]["name"]: t["function"] for t in tools or []}
    ids: set[str] = set()
    for i, message in enumerate(messages):
        for j, call in enumerate(message.get("tool_calls") or []):
            ids.add(call["id"])
            yield from _check_call(call, f"messages[{i}].tool_calls[{j}].function", declared)
        if message["role"] == "tool" and message.get("tool_call_id") not in ids:
            reply = f"answers no earlier tool call (id {message.get('tool_call_id')!r})"
            yield f"messages[{i}].tool_call_id", reply, "unknown_tool_call"


def _check_call(
    call: dict[str, Any], where: str, declared: dict[str, dict[str, Any]]
) -> Iterable[tuple[str, str, str]]:
    from jsonschema import validators

    name = call["function"]["name"]
    if name not in declared:
        known = ", ".join(declared) or "none: the example declares no tools"
        message = f"calls {name!r}, which is not a declared function ({known})"
        yield f"{where}.name", message, "undeclared_function"
        return
    try:
        arguments = json.loads(call["function"]["arguments"])
    except json.JSONDecodeError as exc:
        message = f"not valid JSON ({exc.msg} at character {exc.pos})"
        yield f"{where}.arguments", message, "bad_arguments"
        return
    if not isinstance(arguments, dict):
        yield (
            f"{where}.arguments",
            f"expected a JSON object, got {_kind(arguments)}",
            "bad_arguments",
        )
        return
    schema = declared[name]["parameters"]
    error = next(iter(validators.validator_for(schema)(schema).iter_errors(arguments)), None)
    if error is not None:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path)
        message = f"does not match {name}'s parameters: {error.message}"
        yield f"{where}.arguments{path}", message, "bad_arguments"


# -- LLaMA-Factory / Hermes style turns ----------------------------------------------------------
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def calls_from_json_text(text: str, where: str, at: Reporter) -> list[dict[str, Any]] | None:
    """Tool calls written as JSON text: LLaMA-Factory's `function_call` turn (an object or a
    list of `{"name", "arguments"}`) or Hermes' `<tool_call>{...}</tool_call>` blocks."""
    blocks = _HERMES_CALL.findall(text) or [text]
    objects: list[Any] = []
    for block in blocks:
        try:
            parsed = json.loads(block)
        except json.JSONDecodeError as exc:
            at.add(where, f"tool call is not valid JSON ({exc.msg})", "bad_arguments")
            return None
        objects.extend(parsed if isinstance(parsed, list) else [parsed])
    wrapped = [{"function": o} if isinstance(o, dict) else o for o in objects]
    return parse_tool_calls(wrapped, where, at)


def hermes_text_without_calls(text: str) -> str:
    """An assistant turn's text outside its `<tool_call>` blocks."""
    return _HERMES_CALL.sub("", text).strip()


def load_tools(path: Path) -> list[dict[str, Any]]:
    """Tool definitions from a JSON file (a list, or an object with `tools`), as `chat --tools`
    and other options read them; every problem is one InputError naming the file and field."""
    from slmforge.errors import InputError

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(value, dict) and "tools" in value:
        value = value["tools"]
    problems: list[str] = []

    class _Collect:
        def add(self, field_name: str | None, message: str, rule: str) -> None:
            problems.append(f"{field_name}: {message}" if field_name else message)

    tools = parse_tools(value, "tools", _Collect())
    if tools is None or problems:
        raise InputError(f"{path}: " + "; ".join(problems or ["no tool definitions"]))
    return tools
