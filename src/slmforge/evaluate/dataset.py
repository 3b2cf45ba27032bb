"""Eval rows from any data file `slmforge data` reads: the prompt, the reference, the context.

The reference is the last assistant message and the prompt is every message before it. Unlike
training data, an eval row may have no reference (a prompt-only file, for judge metrics such as
relevance): a messages/ShareGPT row that ends with a user turn, or a prompt/response or alpaca
row whose response is missing or empty. The grounding context for groundedness comes from
`--context-field` (default `context`) of the record, when it is a string.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from slmforge.config.data import ReadOptions
from slmforge.data.containers import Record, bad, container_for
from slmforge.data.conversation import CONVERSATION_RULES
from slmforge.data.formats import RECORD_FORMATS, RecordFormat, record_tools
from slmforge.errors import DataError, Finding, InputError
from slmforge.models.tool_format import hermes_call_text
from slmforge.runtime.engine import Message

_PLACEHOLDER = "\x00reference\x00"  # stands in for a missing reference while a record converts


@dataclass
class EvalRow:
    index: int  # 0-based position among the rows evaluated
    line: int | None  # line (or row) of the data file, for messages
    prompt: list[Message]
    reference: str | None
    context: str | None
    tools: list[dict] | None = None  # functions the answer may call (a tool-call reference)

    def key(self) -> str:
        """What identifies this row's question: a cached answer belongs to the same key."""
        parts = [self.prompt, self.context, *([self.tools] if self.tools else [])]
        text = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def question(self) -> str:
        """The last user message: what a judge is told was asked."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


@dataclass
class _Where:
    """Where the record being converted is; the record converters report findings through it."""

    file: str
    line: int | None
    findings: list[Finding]

    def add(self, field_name: str | None, message: str, rule: str) -> None:
        self.findings.append(Finding(self.file, self.line, field_name, message, "error", rule))


def _reference_key(fmt: RecordFormat, options: ReadOptions) -> str | None:
    """The record key holding the reference, for formats that keep it in its own field."""
    if fmt.name == "prompt_response":
        return options.response_field or "response"
    if fmt.name == "alpaca":
        return "output"
    return None


def _detect(keys: set[str], options: ReadOptions) -> RecordFormat | None:
    if options.input_format in RECORD_FORMATS:
        return RECORD_FORMATS[options.input_format]
    if options.prompt_field or options.response_field:
        return RECORD_FORMATS["prompt_response"]
    return next((f for f in RECORD_FORMATS.values() if f.keys[0] in keys), None)


def _row(
    record: Record,
    fmt: RecordFormat,
    options: ReadOptions,
    context_field: str,
    path: Path,
    findings: list[Finding],
) -> tuple[list[Message], str | None, str | None, list[dict] | None] | None:
    value = record.value
    if not isinstance(value, dict):
        findings.append(bad(path, record.line, "expected a JSON object", "not_object"))
        return None
    ref_key = _reference_key(fmt, options)
    missing_ref = ref_key is not None and not (
        isinstance(value.get(ref_key), str) and value[ref_key].strip()
    )
    if missing_ref:
        value = {**value, ref_key: _PLACEHOLDER}
    where = _Where(str(path), record.line, findings)
    before = len(findings)
    messages = fmt.convert(value, options, where)
    tools = record_tools(value, where)
    if messages is None or len(findings) > before:
        return None
    reference = None
    if messages and messages[-1]["role"] == "assistant":
        last = messages[-1]
        # a reference that calls tools is compared in one text form (tool-call metrics)
        text = hermes_call_text(last) if last.get("tool_calls") else last["content"]
        reference = None if missing_ref else text
        messages = messages[:-1]
    # the conversation rules check the prompt as if a reference followed it
    for rule in CONVERSATION_RULES:
        for field_name, message, rule_name in rule(
            [*messages, {"role": "assistant", "content": ""}], tools
        ):
            where.add(fmt.file_field(field_name), message, rule_name)
    if len(findings) > before:
        return None
    if options.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": options.system_prompt})
    context = value.get(context_field)
    context = context if isinstance(context, str) and context.strip() else None
    return messages, reference, context, tools


def read_rows(
    path: str | Path,
    options: ReadOptions | None = None,
    context_field: str = "context",
    limit: int | None = None,
) -> list[EvalRow]:
    """Every row of `path`; raises DataError naming every record that cannot be read."""
    path = Path(path)
    options = options or ReadOptions()
    if not path.exists():
        raise InputError(f"{path}: data file not found")
    findings: list[Finding] = []
    records, columns = container_for(path, options.input_format)(path, findings)
    first = next((r.value for r in records if isinstance(r.value, dict)), {})
    fmt = _detect(set(columns if columns is not None else first), options)
    if records and fmt is None:
        shown = ", ".join(sorted(map(str, columns or first))) or "none"
        raise InputError(
            f"{path}: cannot tell the format from the keys ({shown}); expected prompt/response, "
            "messages, instruction/output or conversations, or pass --prompt-field"
        )
    rows: list[EvalRow] = []
    for record in records:
        if limit is not None and len(rows) >= limit:
            break
        parsed = _row(record, fmt, options, context_field, path, findings) if fmt else None
        if parsed is not None:
            rows.append(EvalRow(len(rows), record.line, *parsed))
    if any(f.severity == "error" for f in findings):
        raise DataError(sorted(findings, key=lambda f: f.line or 0))
    if not rows:
        raise InputError(f"{path}: no rows to evaluate (the file is empty)")
    return rows
