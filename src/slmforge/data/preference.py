"""Preference pairs: a prompt, the answer preferred and the answer not preferred.

Read from OpenAI's DPO fine-tuning rows (`input.messages`, `preferred_output`,
`non_preferred_output`) and TRL's rows (`prompt`, `chosen`, `rejected`: plain text,
conversational, or conversational with the prompt left implicit as the shared start of
`chosen` and `rejected`). DPO, ORPO and SimPO train on these (`train/preference.py`).

Reading goes through the same containers (`data/containers.py`) and message parsing
(`data/formats.py`, `data/tools.py`) as supervised examples, and the conversation rules run on
prompt + chosen and prompt + rejected, so a pair file gets the same checks as an example file,
with fields named as in the file (`input.messages[2].role`, `non_preferred_output[0].content`).
Pair formats register by name like record formats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slmforge.config.data import ReadOptions
from slmforge.data.containers import Record, bad
from slmforge.data.conversation import CONVERSATION_RULES
from slmforge.data.formats import (
    Where,
    detect_record_format,
    normalize_text,
    open_records,
    pair_format_for,
    parse_message,
    text_field,
    type_name,
)
from slmforge.data.preference_checks import (
    PairTokens,
    is_preference_file,
    pair_token_lengths,
    prompt_room_findings,
    prompt_token_counts,
    record_keys,
    shape_mismatch,
)
from slmforge.data.shapes import (
    PAIR_FORMAT_KEYS,
    example_row_message,
)
from slmforge.data.tools import assign_call_ids, parse_tools
from slmforge.errors import DataError, Finding
from slmforge.models.tool_format import uses_tools

__all__ = [
    "PairTokens",
    "PreferenceExample",
    "is_preference_file",
    "pair_token_lengths",
    "prompt_room_findings",
    "prompt_token_counts",
    "read_preference_examples",
    "read_preference_with_findings",
    "shape_mismatch",
]
Messages = list[dict[str, Any]]
_ANSWERS = "assistant messages"


@dataclass
class PreferenceExample:
    """One pair. `prompt` is the conversation before the answers (system, user, ... turns, in
    OpenAI's message shape, ending with a user or tool message); `chosen` and `rejected` are
    the assistant messages that answer it (usually one each)."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    line: int | None = None
    source: str = ""
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] | None = None
    record_format: str = ""  # the pair format it was read from (openai_dpo, trl), for findings

    @property
    def chosen_messages(self) -> list[dict[str, Any]]:
        return self.prompt + self.chosen

    @property
    def rejected_messages(self) -> list[dict[str, Any]]:
        return self.prompt + self.rejected

    @property
    def uses_tools(self) -> bool:
        return uses_tools(self.chosen_messages + self.rejected, self.tools)

    @property
    def system(self) -> str | None:
        first = self.prompt[0] if self.prompt else None
        return first["content"] if first and first["role"] == "system" else None

    @property
    def prompt_field(self) -> str:
        """The prompt's field as the source file names it."""
        return "input.messages" if self.record_format == "openai_dpo" else "prompt"

    def answer_field(self, side: Literal["chosen", "rejected"]) -> str:
        """An answer's field as the source file names it."""
        if self.record_format != "openai_dpo":
            return side
        return "preferred_output" if side == "chosen" else "non_preferred_output"

    def prompt_turns(self) -> Messages:
        """The prompt without the system message."""
        return [m for m in self.prompt if m["role"] != "system"]

    def is_single_turn(self) -> bool:
        """One user message answered by one plain assistant message on each side."""
        return (
            [m["role"] for m in self.prompt_turns()] == ["user"]
            and len(self.chosen) == 1
            and len(self.rejected) == 1
            and not self.uses_tools
        )

    def prompt_key(self) -> str:
        """Normalized user turns: what 'the same prompt' means for splits and duplicates."""
        return "\n".join(normalize_text(m["content"]) for m in self.prompt if m["role"] == "user")

    def group_key(self) -> str:
        """The group a split keeps together (`meta.group` when a row names one)."""
        group = (self.meta or {}).get("group")
        return group if isinstance(group, str) and group else self.prompt_key()


def answer_key(messages: Messages) -> str:
    """An answer as one comparable string: whitespace collapsed, tool calls by function."""
    return json.dumps(
        [
            [" ".join(m["content"].split()), [c["function"] for c in m.get("tool_calls") or []]]
            for m in messages
        ],
        sort_keys=True,
        ensure_ascii=False,
    )


# -- record formats -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Side:
    """Where one part of a pair lives in the record: `key[i]` for message lists (shifted by
    `offset` when the part starts inside the list), `key` alone for plain text."""

    key: str
    offset: int = 0
    text: bool = False

    def label(self, index: int) -> str:
        return self.key if self.text else f"{self.key}[{index + self.offset}]"


@dataclass
class _Parts:
    prompt: Messages
    chosen: Messages
    rejected: Messages
    tools: list[dict[str, Any]] | None
    sides: tuple[_Side, _Side, _Side]  # prompt, chosen, rejected


PairConverter = Callable[[dict[str, Any], Where], "_Parts | None"]
PAIR_FORMATS: dict[str, PairConverter] = {}


def register_pair_format(name: str) -> Callable[[PairConverter], PairConverter]:
    if name not in PAIR_FORMAT_KEYS:
        raise ValueError(f"add the keys that identify '{name}' to data/shapes.py first")

    def decorator(fn: PairConverter) -> PairConverter:
        PAIR_FORMATS[name] = fn
        return fn

    return decorator


def _message_list(value: Any, side: _Side, at: Where, what: str) -> Messages | None:
    """A non-empty list of messages, each parsed as in supervised files."""
    if value is None:
        rule = "missing_side" if what == _ANSWERS else "missing_field"
        at.add(side.key, f"missing '{side.key}' (expected a non-empty list of {what})", rule)
        return None
    if not isinstance(value, list):
        at.add(side.key, f"expected a list of {what}, got {type_name(value)}", "wrong_type")
        return None
    if not value:
        at.add(side.key, f"empty (expected a non-empty list of {what})", "empty_field")
        return None
    before = len(at.findings)
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            at.add(
                side.label(i),
                f"expected an object with role and content, got {type_name(item)}",
                "wrong_type",
            )
        elif (message := parse_message(item, side.label(i), at)) is not None:
            if what == _ANSWERS and message["role"] != "assistant":
                _not_assistant(side, i, message["role"], at)
            messages.append(message)
    return messages if len(at.findings) == before else None


def _not_assistant(side: _Side, index: int, role: str, at: Where) -> None:
    at.add(
        f"{side.label(index)}.role",
        f"an answer holds assistant messages only, got {role}",
        "answer_role",
    )


def _part(record: dict[str, Any], side: _Side, role: str, at: Where, what: str) -> Messages | None:
    """A part given as plain text (one `role` message) or as a list of messages."""
    value = record.get(side.key)
    if value is None:
        rule = "missing_side" if what == _ANSWERS else "missing_field"
        at.add(side.key, f"missing '{side.key}' (expected a string or a list of {what})", rule)
        return None
    if isinstance(value, str):
        text = text_field(record, side.key, at)
        return None if text is None else [{"role": role, "content": text}]
    return _message_list(value, side, at, what)


@register_pair_format("openai_dpo")
def _from_openai_dpo(record: dict[str, Any], at: Where) -> _Parts | None:
    source = record.get("input")
    prompt_side = _Side("input.messages")
    sides = (prompt_side, _Side("preferred_output"), _Side("non_preferred_output"))
    prompt, tools = None, None
    if source is None:
        at.add("input", "missing 'input' (expected an object with messages)", "missing_field")
    elif not isinstance(source, dict):
        at.add("input", f"expected an object with messages, got {type_name(source)}", "wrong_type")
    else:
        prompt = _message_list(source.get("messages"), prompt_side, at, "messages")
        if source.get("tools") is not None:
            tools = parse_tools(source["tools"], "input.tools", at)
    chosen = _message_list(record.get("preferred_output"), sides[1], at, _ANSWERS)
    rejected = _message_list(record.get("non_preferred_output"), sides[2], at, _ANSWERS)
    if prompt is None or chosen is None or rejected is None:
        return None
    return _Parts(prompt, chosen, rejected, tools, sides)


@register_pair_format("trl")
def _from_trl(record: dict[str, Any], at: Where) -> _Parts | None:
    chosen_value, rejected_value = record.get("chosen"), record.get("rejected")
    tools = parse_tools(record["tools"], "tools", at) if record.get("tools") is not None else None
    if record.get("prompt") is None and isinstance(chosen_value, list):
        return _implicit_prompt(record, tools, at)
    text = isinstance(record.get("prompt"), str) or record.get("prompt") is None
    sides = (
        _Side("prompt", text=text),
        _Side("chosen", text=not isinstance(chosen_value, list)),
        _Side("rejected", text=not isinstance(rejected_value, list)),
    )
    prompt = _part(record, sides[0], "user", at, "messages")
    chosen = _part(record, sides[1], "assistant", at, _ANSWERS)
    rejected = _part(record, sides[2], "assistant", at, _ANSWERS)
    if prompt is None or chosen is None or rejected is None:
        return None
    return _Parts(prompt, chosen, rejected, tools, sides)


def _implicit_prompt(
    record: dict[str, Any], tools: list[dict[str, Any]] | None, at: Where
) -> _Parts | None:
    """TRL's implicit prompt: `chosen` and `rejected` are whole conversations and their shared
    start, up to the last user or tool turn, is the prompt."""
    chosen = _message_list(record.get("chosen"), _Side("chosen"), at, "messages")
    rejected = _message_list(record.get("rejected"), _Side("rejected"), at, "messages")
    if chosen is None or rejected is None:
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if not shared or chosen[shared - 1]["role"] not in ("user", "tool"):
        at.add(
            "rejected",
            "chosen and rejected share no prompt (no 'prompt' field, and the two conversations "
            "differ before their last user turn)",
            "no_shared_prompt",
        )
        return None
    sides = (_Side("chosen"), _Side("chosen", shared), _Side("rejected", shared))
    return _Parts(chosen[:shared], chosen[shared:], rejected[shared:], tools, sides)


# -- checks on one pair -----------------------------------------------------------------------
_RULE_FIELD = re.compile(r"^messages\[(\d+)\](.*)$")


def _file_field(name: str | None, parts: _Parts, answer: _Side) -> str | None:
    """A conversation rule's `messages[i]...` field on prompt + answer, as the file names it."""
    match = _RULE_FIELD.match(name or "")
    if match is None:
        return parts.sides[0].key if name == "messages" else name
    index, rest = int(match.group(1)), match.group(2)
    if index < len(parts.prompt):
        return parts.sides[0].label(index) + ("" if parts.sides[0].text else rest)
    return answer.label(index - len(parts.prompt)) + ("" if answer.text else rest)


def _check_pair(parts: _Parts, at: Where) -> None:
    """The prompt ends where an answer can follow, answers are assistant messages, each side
    is a valid conversation, and the two answers differ."""
    prompt_side = parts.sides[0]
    last = len(parts.prompt) - 1
    if parts.prompt[last]["role"] not in ("user", "tool"):
        at.add(
            f"{prompt_side.label(last)}.role" if not prompt_side.text else prompt_side.key,
            f"the prompt must end with a user or tool message (the answers follow it), "
            f"got {parts.prompt[last]['role']}",
            "prompt_end",
        )
        return
    before = len(at.findings)
    for answer, side in zip((parts.chosen, parts.rejected), parts.sides[1:], strict=True):
        for i, message in enumerate(answer):
            if message["role"] != "assistant":
                _not_assistant(side, i, message["role"], at)
    if len(at.findings) > before:
        return
    seen: set[tuple[str | None, str]] = set()
    for answer, side in zip((parts.chosen, parts.rejected), parts.sides[1:], strict=True):
        for rule in CONVERSATION_RULES:
            for field_name, message, rule_name in rule(parts.prompt + answer, parts.tools):
                where = _file_field(field_name, parts, side)
                if (where, message) not in seen:
                    seen.add((where, message))
                    at.add(where, message, rule_name)
    if answer_key(parts.chosen) == answer_key(parts.rejected):
        at.add(parts.sides[2].key, "chosen and rejected are identical", "identical_answers")


def _convert(
    record: Record, fmt: str, options: ReadOptions, path: Path, findings: list[Finding]
) -> PreferenceExample | None:
    at = Where(str(path), record.line, findings)
    if not isinstance(record.value, dict):
        at.add(None, f"expected a JSON object, got {type_name(record.value)}", "not_object")
        return None
    before = len(findings)
    parts = PAIR_FORMATS[fmt](record.value, at)
    if parts is None or len(findings) > before:
        return None
    _check_pair(parts, at)
    meta = record.value.get("meta")
    if meta is not None and not isinstance(meta, dict):
        at.add("meta", f"expected an object, got {type_name(meta)}", "wrong_type")
    if len(findings) > before:
        return None
    prompt, chosen, rejected = parts.prompt, parts.chosen, parts.rejected
    # call ids are numbered through prompt + answer; a prompt's calls get the same ids twice
    assign_call_ids(prompt + chosen, record.line)
    assign_call_ids(prompt + rejected, record.line)
    if options.system_prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": options.system_prompt})
    return PreferenceExample(
        prompt, chosen, rejected, record.line, str(path), parts.tools, meta or None, fmt
    )


# -- reading --------------------------------------------------------------------------------
def _first_dict(records: list[Record]) -> Record:
    return next((r for r in records if isinstance(r.value, dict)), records[0])


def read_preference_with_findings(
    path: str | Path, options: ReadOptions | None = None
) -> tuple[list[PreferenceExample], list[Finding]]:
    """Every valid pair and a finding for every invalid record; raises only when the file
    cannot be opened at all."""
    path = Path(path)
    options = options or ReadOptions()
    records, columns, findings = open_records(path, options, "pair")
    if not records:
        return [], findings
    first = _first_dict(records)
    keys = record_keys(first, columns)
    line = None if columns is not None else first.line
    fmt = pair_format_for(keys, options)
    if fmt is None:
        return [], [*findings, _not_pairs(path, line, keys, options)]
    if columns is not None and (missing := _missing_columns(path, columns, fmt)):
        return [], findings + missing
    pairs = [p for r in records if (p := _convert(r, fmt, options, path, findings))]
    findings.sort(key=lambda f: f.line or 0)
    return pairs, findings


_COLUMNS = {"openai_dpo": ("input", *PAIR_FORMAT_KEYS["openai_dpo"]), "trl": ("chosen", "rejected")}


def _missing_columns(path: Path, columns: list[str], fmt: str) -> list[Finding]:
    """For tables a missing column is one finding, not one per row."""
    shown = ", ".join(columns) or "none"
    findings = []
    for name in _COLUMNS[fmt]:
        if name not in columns:
            rule = "missing_field" if name == "input" else "missing_side"
            message = f"no '{name}' column (columns: {shown})"
            findings.append(Finding(str(path), None, name, message, "error", rule))
    return findings


def _not_pairs(path: Path, line: int | None, keys: list[str], options: ReadOptions) -> Finding:
    supervised = detect_record_format(keys, options)
    if supervised is not None:
        return Finding(
            str(path), line, None, example_row_message(supervised), "error", "wrong_shape"
        )
    shown = ", ".join(sorted(map(str, keys))) or "none"
    return bad(
        path,
        line,
        f"cannot tell the pair format from the keys ({shown}); expected input/"
        "preferred_output/non_preferred_output (OpenAI DPO) or prompt/chosen/rejected (TRL)",
        "unknown_format",
    )


def read_preference_examples(
    path: str | Path, options: ReadOptions | None = None
) -> list[PreferenceExample]:
    """Read a pair file; raise DataError listing every invalid record."""
    pairs, findings = read_preference_with_findings(path, options)
    if any(f.severity == "error" for f in findings):
        raise DataError(findings)
    return pairs
