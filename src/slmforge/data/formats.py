"""Read any supported data file into chat examples, and write examples back out.

Reading has two registries. A *container* turns a file into raw records with line numbers
(JSON Lines, CSV, Parquet, a saved Hugging Face dataset). A *record format* turns one record
into chat messages (prompt/response, OpenAI messages, alpaca, ShareGPT). Adding a format is one
function plus one `register_*` call. Every problem becomes a `Finding` with file, line and field,
and reading never stops at the first bad record, so a user fixes a file in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.config.data import ReadOptions
from slmforge.data.containers import Record, bad, container_for
from slmforge.data.conversation import CONVERSATION_RULES
from slmforge.data.shapes import pair_format_of, pair_row_message
from slmforge.data.tools import (
    assign_call_ids,
    calls_from_json_text,
    hermes_text_without_calls,
    parse_tool_calls,
    parse_tools,
)
from slmforge.errors import DataError, Finding, InputError
from slmforge.models.tool_format import uses_tools

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    """One chat example: a list of role/content messages and where it came from. Messages
    follow OpenAI's fine-tuning format (`content` always a string here; an assistant message
    may carry `tool_calls`, a `tool` message its `tool_call_id`; see data/tools.py)."""

    messages: list[dict[str, Any]]
    line: int | None = None
    source: str = ""
    meta: dict[str, Any] | None = None  # the record's "meta" object (e.g. augmentation origin)
    tools: list[dict[str, Any]] | None = None  # function definitions the assistant may call

    @property
    def uses_tools(self) -> bool:
        return uses_tools(self.messages, self.tools)

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else None
        return first["content"] if first and first["role"] == "system" else None

    def turns(self) -> list[dict[str, Any]]:
        """The messages without the system message."""
        return [m for m in self.messages if m["role"] != "system"]

    def is_single_turn(self) -> bool:
        return len(self.turns()) == 2

    @property
    def prompt(self) -> str:
        """The first user message (the prompt of a single-turn example)."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def response(self) -> str:
        """The last assistant message (the response of a single-turn example)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def prompt_key(self) -> str:
        """Normalized user turns: what 'the same prompt' means for duplicates and leakage."""
        return "\n".join(normalize_text(m["content"]) for m in self.messages if m["role"] == "user")

    def group_key(self) -> str:
        """The group a split keeps together: an augmented row belongs to its original's group
        (`meta.group`, written by `data augment`), any other row to its own prompt."""
        group = (self.meta or {}).get("group")
        return group if isinstance(group, str) and group else self.prompt_key()


def normalize_text(text: str) -> str:
    """Casefold and collapse whitespace, so 'Hi  there' and 'hi there' count as one prompt."""
    return " ".join(text.casefold().split())


@dataclass
class Where:
    """Location of the record being converted; makes findings with file and line filled in."""

    file: str
    line: int | None
    findings: list[Finding] = field(default_factory=list)

    def add(self, field_name: str | None, message: str, rule: str) -> None:
        self.findings.append(Finding(self.file, self.line, field_name, message, "error", rule))


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def text_field(record: dict[str, Any], key: str, at: Where, label: str | None = None) -> str | None:
    """A required non-empty string field, or None after recording what is wrong with it."""
    label = label or key
    value = record.get(key)
    if key not in record or value is None:
        at.add(label, f"missing '{key}' (expected a non-empty string)", "missing_field")
    elif not isinstance(value, str):
        at.add(label, f"expected a string, got {type_name(value)}", "wrong_type")
    elif not value.strip():
        at.add(label, "empty (expected a non-empty string)", "empty_field")
    else:
        return value
    return None


# -- record formats ------------------------------------------------------------------------
Converter = Callable[[dict[str, Any], ReadOptions, Where], list[dict[str, Any]] | None]


@dataclass(frozen=True)
class RecordFormat:
    name: str
    keys: tuple[str, ...]  # the keys that identify the format in auto-detection
    convert: Converter
    turns_key: str = "messages"  # the record's list of turns, and the role key in each turn,
    role_key: str = "role"  # so findings name fields as they are in the file

    def file_field(self, name: str | None) -> str | None:
        """`messages[1].role` as this format spells it (ShareGPT: `conversations[1].from`)."""
        if name is None or not name.startswith("messages"):
            return name
        name = self.turns_key + name[len("messages") :]
        return name[: -len(".role")] + f".{self.role_key}" if name.endswith(".role") else name


RECORD_FORMATS: dict[str, RecordFormat] = {}


def register_record_format(
    name: str, keys: tuple[str, ...], turns_key: str = "messages", role_key: str = "role"
) -> Callable[[Converter], Converter]:
    def decorator(fn: Converter) -> Converter:
        RECORD_FORMATS[name] = RecordFormat(name, keys, fn, turns_key, role_key)
        return fn

    return decorator


@register_record_format("messages", ("messages",))
def _from_messages(record: dict[str, Any], options: ReadOptions, at: Where):
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        what = "missing" if raw is None else f"got {type_name(raw)}"
        at.add("messages", f"expected a non-empty list of messages, {what}", "missing_field")
        return None
    messages = []
    for i, item in enumerate(raw):
        label = f"messages[{i}]"
        if not isinstance(item, dict):
            at.add(
                label,
                f"expected an object with role and content, got {type_name(item)}",
                "wrong_type",
            )
            continue
        message = parse_message(item, label, at)
        if message is not None:
            messages.append(message)
    return messages


def parse_message(item: dict[str, Any], label: str, at: Where) -> dict[str, Any] | None:
    """One OpenAI message; an assistant message that calls tools may have no content, and a
    tool reply's content may be empty."""
    role = text_field(item, "role", at, f"{label}.role")
    if role is None:
        return None
    if role not in ROLES:
        known = ", ".join(ROLES)
        at.add(f"{label}.role", f"unknown role '{role}' (expected one of {known})", "unknown_role")
        return None
    calling = role == "assistant" and item.get("tool_calls") is not None
    if calling or role == "tool":
        content = (item.get("content") or "") if calling else item.get("content")
        if not isinstance(content, str):
            at.add(f"{label}.content", f"expected a string, got {type_name(content)}", "wrong_type")
            return None
    else:
        content = text_field(item, "content", at, f"{label}.content")
        if content is None:
            return None
    message: dict[str, Any] = {"role": role, "content": content}
    if calling:
        message["tool_calls"] = parse_tool_calls(item["tool_calls"], f"{label}.tool_calls", at)
        if message["tool_calls"] is None:
            return None
    if role == "tool" and isinstance(item.get("tool_call_id"), str):
        message["tool_call_id"] = item["tool_call_id"]
    return message


_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",  # LLaMA-Factory: the call as JSON
    "observation": "tool",  # LLaMA-Factory: the function's result
    "tool": "tool",  # Hermes: <tool_response> turns
}


@register_record_format("sharegpt", ("conversations",), "conversations", "from")
def _from_sharegpt(record: dict[str, Any], options: ReadOptions, at: Where):
    raw = record.get("conversations")
    if not isinstance(raw, list) or not raw:
        what = "missing" if raw is None else f"got {type_name(raw)}"
        at.add("conversations", f"expected a non-empty list of turns, {what}", "missing_field")
        return None
    messages = []
    for i, item in enumerate(raw):
        label = f"conversations[{i}]"
        if not isinstance(item, dict):
            at.add(
                label,
                f"expected an object with from and value, got {type_name(item)}",
                "wrong_type",
            )
            continue
        speaker = text_field(item, "from", at, f"{label}.from")
        value = text_field(item, "value", at, f"{label}.value")
        role = _SHAREGPT_ROLES.get(speaker or "")
        if speaker is not None and role is None:
            known = ", ".join(_SHAREGPT_ROLES)
            at.add(
                f"{label}.from",
                f"unknown speaker '{speaker}' (expected one of {known})",
                "unknown_role",
            )
        elif role is not None and value is not None:
            message = _sharegpt_message(speaker or "", role, value, label, at)
            messages.extend([message] if message else [])
    return messages


def _sharegpt_message(
    speaker: str, role: str, value: str, label: str, at: Where
) -> dict[str, Any] | None:
    """A turn; a `function_call` turn or a Hermes `<tool_call>` block becomes tool_calls."""
    if speaker != "function_call" and not (role == "assistant" and "<tool_call>" in value):
        return {"role": role, "content": value}
    calls = calls_from_json_text(value, f"{label}.value", at)
    if calls is None:
        return None
    text = "" if speaker == "function_call" else hermes_text_without_calls(value)
    return {"role": "assistant", "content": text, "tool_calls": calls}


@register_record_format("alpaca", ("instruction", "output"))
def _from_alpaca(record: dict[str, Any], options: ReadOptions, at: Where):
    instruction = text_field(record, "instruction", at)
    output = text_field(record, "output", at)
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        at.add("input", f"expected a string, got {type_name(extra)}", "wrong_type")
        return None
    if instruction is None or output is None:
        return None
    # The alpaca convention: the optional input follows the instruction after a blank line.
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


@register_record_format("prompt_response", ("prompt", "response"))
def _from_prompt_response(record: dict[str, Any], options: ReadOptions, at: Where):
    prompt = text_field(record, options.prompt_field or "prompt", at)
    response = text_field(record, options.response_field or "response", at)
    if prompt is None or response is None:
        return None
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# -- reading -------------------------------------------------------------------------------
def detect_record_format(keys: Iterable[str], options: ReadOptions) -> str | None:
    if options.input_format in RECORD_FORMATS:
        return options.input_format
    if options.prompt_field or options.response_field:
        return "prompt_response"
    keys = set(keys)
    for fmt in RECORD_FORMATS.values():
        if keys.issuperset(fmt.keys[:1]):
            return fmt.name
    return None


def pair_format_for(keys: Iterable[str], options: ReadOptions) -> str | None:
    """The preference format of a pair file (data/preference.py reads those), unless the
    options name a supervised format."""
    if options.input_format in RECORD_FORMATS or options.prompt_field or options.response_field:
        return None
    return pair_format_of(keys, options.input_format)


def _unknown_format(path: Path, line: int | None, keys: Iterable[str]) -> Finding:
    shown = ", ".join(sorted(map(str, keys))) or "none"
    return bad(
        path,
        line,
        f"cannot tell the format from the keys ({shown}); expected prompt/"
        "response, messages, instruction/output or conversations; pass --input-format "
        "or --prompt-field/--response-field",
        "unknown_format",
    )


def _missing_columns(path: Path, columns: list[str], fmt: str, options: ReadOptions):
    """For tables a missing column is one finding, not one per row."""
    if fmt == "prompt_response":
        needed = [options.prompt_field or "prompt", options.response_field or "response"]
    else:
        needed = list(RECORD_FORMATS[fmt].keys)
    for name in needed:
        if name not in columns:
            yield Finding(
                str(path),
                None,
                name,
                f"no '{name}' column (columns: {', '.join(columns) or 'none'})",
                "error",
                "missing_field",
            )


def _convert(
    record: Record, fmt: RecordFormat, options: ReadOptions, path: Path, findings: list[Finding]
) -> Example | None:
    at = Where(str(path), record.line, findings)
    if not isinstance(record.value, dict):
        at.add(None, f"expected a JSON object, got {type_name(record.value)}", "not_object")
        return None
    before = len(findings)
    messages = fmt.convert(record.value, options, at)
    tools = record_tools(record.value, at)
    if messages is None or len(findings) > before:
        return None
    assign_call_ids(messages, record.line)
    # Rules run before the system prompt is added, so indices in findings match the file.
    for rule in CONVERSATION_RULES:
        for field_name, message, rule_name in rule(messages, tools):
            at.add(fmt.file_field(field_name), message, rule_name)
    if len(findings) > before:
        return None
    meta = record.value.get("meta")
    if meta is not None and not isinstance(meta, dict):
        at.add("meta", f"expected an object, got {type_name(meta)}", "wrong_type")
        return None
    if options.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": options.system_prompt})
    return Example(messages, record.line, str(path), meta or None, tools)


def record_tools(record: dict[str, Any], at: Any) -> list[dict[str, Any]] | None:
    """The functions a record declares: OpenAI's `tools`, or the older `functions`."""
    key = next((k for k in ("tools", "functions") if record.get(k) is not None), None)
    return parse_tools(record[key], key, at) if key else None


def open_records(
    path: Path, options: ReadOptions, unit: str
) -> tuple[list[Record], list[str] | None, list[Finding]]:
    """The raw records of a data file (and its columns, for tables) with the findings of
    reading them; an empty file is a finding that says one `unit` per line was expected."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    findings: list[Finding] = []
    records, columns = container_for(path, options.input_format)(path, findings)
    if not records and not findings:
        message = f"file is empty (expected one {unit} per line)"
        findings.append(bad(path, None, message, "empty_file"))
    return records, columns, findings


def read_with_findings(
    path: str | Path, options: ReadOptions | None = None
) -> tuple[list[Example], list[Finding]]:
    """Every valid example and a finding for every invalid record; raises only when the file
    cannot be opened at all."""
    path = Path(path)
    options = options or ReadOptions()
    records, columns, findings = open_records(path, options, "example")
    if not records:
        return [], findings
    first = next((r for r in records if isinstance(r.value, dict)), records[0])
    keys = (
        columns if columns is not None else (first.value if isinstance(first.value, dict) else {})
    )
    if (pair := pair_format_for(keys, options)) is not None:
        line = None if columns is not None else first.line
        wrong = Finding(str(path), line, None, pair_row_message(pair), "error", "wrong_shape")
        return [], [*findings, wrong]
    name = detect_record_format(keys, options)
    if name is None:
        return [], [*findings, _unknown_format(path, None if columns else first.line, keys)]
    if columns is not None and (missing := list(_missing_columns(path, columns, name, options))):
        return [], findings + missing
    fmt = RECORD_FORMATS[name]
    examples = [ex for r in records if (ex := _convert(r, fmt, options, path, findings))]
    findings.sort(key=lambda f: f.line or 0)
    return examples, findings


def read_examples(path: str | Path, options: ReadOptions | None = None) -> list[Example]:
    """Read any supported file into examples; raise DataError listing every invalid record."""
    examples, findings = read_with_findings(path, options)
    if any(f.severity == "error" for f in findings):
        raise DataError(findings)
    return examples
