"""Tool calls in a local model's output: a parser per syntax (a registry), the stream wrapper that
turns a reply's calls into `ToolCall`s, and the grammars that force a call (`tool_choice`
`required` or a named function).

Which syntax a model writes follows its chat template: a template that renders tools itself
is in its family's syntax (Llama 3.1 JSON, Mistral `[TOOL_CALLS]`, Qwen/Hermes `<tool_call>`);
a template without tool support gets slmforge's Hermes-style rendering (models/tool_format.py),
so the model answers in Hermes syntax. A parser finds where calls start, so the text before
them streams as content and the calls are parsed whole when the reply ends; text that does not
parse stays text (nothing is lost).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from slmforge.models.chat import detect_format
from slmforge.models.tool_format import template_knows_tools, template_takes_system_tools
from slmforge.runtime.engine import Delta, ToolCall

ToolList = list[dict[str, Any]]


@dataclass(frozen=True)
class ToolParser:
    name: str
    start: str  # where the calls begin in the reply
    parse: Callable[[str], list[tuple[str, Any]] | None]  # (name, arguments) of each call
    grammar: Callable[[list[str], bool], str]  # Lark for calls to these schemas (parallel?)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _named(objects: Any, arguments_key: str) -> list[tuple[str, Any]] | None:
    objects = objects if isinstance(objects, list) else [objects]
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        arguments = obj.get(arguments_key, {})
        arguments = _loads(arguments) if isinstance(arguments, str) else arguments
        if not isinstance(arguments, dict):
            return None
        calls.append((obj["name"], arguments))
    return calls or None


# -- Hermes / Qwen: <tool_call>{"name": ..., "arguments": {...}}</tool_call> ---------------------
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _hermes_parse(text: str) -> list[tuple[str, Any]] | None:
    blocks = _HERMES.findall(text)
    rest = _HERMES.sub("", text).strip()
    if not blocks or rest:
        return None
    calls = [_named(_loads(block), "arguments") for block in blocks]
    return None if any(c is None for c in calls) else [c for group in calls for c in group or []]


def _hermes_grammar(schemas: list[str], parallel: bool) -> str:
    more = ' ("\\n" call)*' if parallel else ""
    return f'start: call{more}\ncall: "<tool_call>\\n" body "\\n</tool_call>"\n' + _body(schemas)


# -- Llama 3.1 / 3.2: {"name": ..., "parameters": {...}} (optionally after <|python_tag|>) -------
def _llama_parse(text: str) -> list[tuple[str, Any]] | None:
    text = text.removeprefix("<|python_tag|>").strip()
    calls = [_named(_loads(part), "parameters") for part in text.split(";") if part.strip()]
    return None if not calls or any(c is None for c in calls) else [c for g in calls for c in g]


def _llama_grammar(schemas: list[str], parallel: bool) -> str:
    more = ' ("; " body)*' if parallel else ""
    return f"start: body{more}\n" + _body(schemas, "parameters")


# -- Mistral: [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...] ------------------------------
def _mistral_parse(text: str) -> list[tuple[str, Any]] | None:
    text = text.strip()
    if not text.startswith("[TOOL_CALLS]"):
        return None
    return _named(_loads(text.removeprefix("[TOOL_CALLS]").strip()), "arguments")


def _mistral_grammar(schemas: list[str], parallel: bool) -> str:
    more = ' (", " body)*' if parallel else ""
    return f'start: "[TOOL_CALLS] [" body{more} "]"\n' + _body(schemas)


# -- Phi-4-mini: <|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|> ------------------
_PHI4 = re.compile(r"<\|tool_call\|>\s*(.*?)\s*<\|/tool_call\|>", re.DOTALL)


def _phi4_parse(text: str) -> list[tuple[str, Any]] | None:
    blocks = _PHI4.findall(text)
    if not blocks or _PHI4.sub("", text).strip():
        return None
    calls = [_named(_loads(block), "arguments") for block in blocks]
    return None if any(c is None for c in calls) else [c for group in calls for c in group or []]


def _phi4_grammar(schemas: list[str], parallel: bool) -> str:
    more = ' (", " body)*' if parallel else ""
    return f'start: "<|tool_call|>[" body{more} "]<|/tool_call|>"\n' + _body(schemas)


def _body(schemas: list[str], arguments_key: str = "arguments") -> str:
    """One JSON object naming one of the functions with arguments matching its schema."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, arguments_key: json.loads(schema)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for name, schema in (s.split("\t", 1) for s in schemas)
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    options_text = json.dumps({**schema, "x-guidance": {"whitespace_flexible": False}})
    return f"body: %json {options_text}\n"


PARSERS: dict[str, ToolParser] = {
    p.name: p
    for p in (
        ToolParser("hermes", "<tool_call>", _hermes_parse, _hermes_grammar),
        ToolParser("llama3_json", "{", _llama_parse, _llama_grammar),
        ToolParser("mistral", "[TOOL_CALLS]", _mistral_parse, _mistral_grammar),
        ToolParser("phi4", "<|tool_call|>", _phi4_parse, _phi4_grammar),
    )
}
# The chat formats whose own templates write calls in a syntax other than Hermes.
_FORMAT_PARSERS = {"llama3": "llama3_json", "mistral": "mistral"}


def parser_for(tokenizer: Any) -> ToolParser:
    """The syntax this model's replies carry calls in (see the module docstring)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if "<|tool_call|>" in vocab and "<|/tool_call|>" in vocab:
        return PARSERS["phi4"]  # Phi-4-mini answers in its own tokens whatever the prompt
    if template_takes_system_tools(template) and not template_knows_tools(template):
        return PARSERS["phi4"]  # models/tool_format.py renders Phi-4-mini's convention
    if not template_knows_tools(template):
        return PARSERS["hermes"]  # slmforge's fallback rendering asked for Hermes syntax
    fmt = detect_format(template)
    return PARSERS[_FORMAT_PARSERS.get(fmt.name if fmt else "", "hermes")]


# -- forcing a call ------------------------------------------------------------------------------
def forced_grammar(parser: ToolParser, tools: ToolList, choice: Any, parallel: bool) -> str | None:
    """The Lark grammar for `tool_choice` `required` (any declared function) or a named function;
    None for `auto` and `none`."""
    if choice == "required":
        chosen = tools
    elif isinstance(choice, dict):
        name = choice["function"]["name"]
        chosen = [t for t in tools if t["function"]["name"] == name]
        parallel = False
    else:
        return None
    schemas = [f"{t['function']['name']}\t" + json.dumps(_closed(t["function"])) for t in chosen]
    return parser.grammar(schemas, parallel)


def _closed(function: dict[str, Any]) -> dict[str, Any]:
    """A function's parameters with no undeclared arguments unless the schema allows them: a
    forced call names the declared parameters (as OpenAI's strict function calling does), and a
    weak model cannot ramble on in made-up keys."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        parameters = {**parameters, "additionalProperties": False}
    return parameters


# -- the stream ----------------------------------------------------------------------------------
def calls_in(text: str, parser: ToolParser, first_index: int = 0) -> list[ToolCall] | None:
    """The calls `text` (the reply from the parser's start marker on) holds, or None."""
    parsed = parser.parse(text)
    if parsed is None:
        return None
    return [
        ToolCall("call_" + secrets.token_hex(12), name, json.dumps(arguments, ensure_ascii=False))
        for name, arguments in parsed
    ]


def split_at_start(text: str, marker: str) -> tuple[str, str, bool]:
    """(text that is surely content, text held back, whether the marker was found): the tail
    that could be the beginning of the marker is held until the next piece decides."""
    at = text.find(marker)
    if at >= 0:
        return text[:at], text[at:], True
    for keep in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-keep:]):
            return text[:-keep], text[-keep:], False
    return text, "", False


def with_tool_calls(deltas: Iterator[Delta], parser: ToolParser) -> Iterator[Delta]:
    """Pass a reply's deltas through, holding back the text from the parser's start marker on;
    at the end, that text becomes `tool_calls` (finish_reason `tool_calls`) when it parses, else
    it is released as text."""
    held, calling = "", False
    for delta in deltas:
        if delta.finish_reason is None:
            if calling:
                held += delta.text
                delta.text = ""
            else:
                delta.text, held, calling = split_at_start(held + delta.text, parser.start)
            yield delta
            continue
        calls = calls_in(held, parser) if calling else None
        if calls:
            yield Delta(tool_calls=calls)
            if delta.finish_reason == "stop":
                delta.finish_reason = "tool_calls"
        elif held:
            yield Delta(text=held)
        yield delta
        return
