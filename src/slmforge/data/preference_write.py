"""Write preference pairs: one writer per pair format (a registry), atomically, and
`slmforge data convert` on a pair file.

`openai_dpo` writes OpenAI's DPO fine-tuning rows, `trl` TRL's conversational rows (explicit
prompt) and `trl_text` TRL's plain-text rows, which only hold a single user turn answered by
plain text on each side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import atomic_file, check_output
from slmforge.config.data import PAIR_OUTPUT_FORMATS, ConvertConfig, ReadOptions
from slmforge.data.preference import PreferenceExample, read_preference_examples
from slmforge.data.writing import openai_message
from slmforge.errors import ConfigError, DataError, Finding, InputError

PairWriter = Callable[[PreferenceExample], dict[str, Any]]
PAIR_WRITERS: dict[str, PairWriter] = {}


def register_pair_writer(name: str) -> Callable[[PairWriter], PairWriter]:
    def decorator(fn: PairWriter) -> PairWriter:
        PAIR_WRITERS[name] = fn
        return fn

    return decorator


class _CannotWrite(Exception):
    """One pair that the chosen output format cannot hold; becomes a Finding."""


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [openai_message(m) for m in messages]


def _with_meta(pair: PreferenceExample, row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "meta": pair.meta} if pair.meta else row


@register_pair_writer("openai_dpo")
def _to_openai_dpo(pair: PreferenceExample) -> dict[str, Any]:
    source: dict[str, Any] = {"messages": _messages(pair.prompt)}
    if pair.tools:
        source["tools"] = pair.tools
    row = {
        "input": source,
        "preferred_output": _messages(pair.chosen),
        "non_preferred_output": _messages(pair.rejected),
    }
    return _with_meta(pair, row)


@register_pair_writer("trl")
def _to_trl(pair: PreferenceExample) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": _messages(pair.prompt),
        "chosen": _messages(pair.chosen),
        "rejected": _messages(pair.rejected),
    }
    if pair.tools:
        row["tools"] = pair.tools
    return _with_meta(pair, row)


@register_pair_writer("trl_text")
def _to_trl_text(pair: PreferenceExample) -> dict[str, Any]:
    if pair.uses_tools:
        raise _CannotWrite(
            "has tool definitions or calls, which trl_text cannot hold (write trl or openai_dpo)"
        )
    if not pair.is_single_turn():
        turns = len(pair.prompt_turns())
        raise _CannotWrite(
            f"has a {turns}-message prompt or several answer messages; trl_text holds one user "
            "message and one answer per side (write trl or openai_dpo)"
        )
    row = {
        "prompt": pair.prompt_turns()[0]["content"],
        "chosen": pair.chosen[0]["content"],
        "rejected": pair.rejected[0]["content"],
    }
    return _with_meta(pair, row)


def write_pairs(
    pairs: list[PreferenceExample],
    path: str | Path,
    fmt: str = "openai_dpo",
    force: bool = False,
) -> Path:
    """Write pairs as jsonl in `fmt`, atomically; every pair that `fmt` cannot hold is
    reported (with its source line) before anything is written."""
    if fmt not in PAIR_WRITERS:
        raise InputError(
            f"unknown pair output format '{fmt}' (expected one of {', '.join(PAIR_WRITERS)})"
        )
    writer = PAIR_WRITERS[fmt]
    lines, findings = [], []
    for pair in pairs:
        try:
            lines.append(json.dumps(writer(pair), ensure_ascii=False))
        except _CannotWrite as exc:
            findings.append(
                Finding(
                    pair.source,
                    pair.line,
                    pair.prompt_field,
                    str(exc),
                    "error",
                    f"cannot_write_{fmt}",
                )
            )
    if findings:
        raise DataError(findings)
    if fmt == "trl_text" and (dropped := sum(p.system is not None for p in pairs)):
        progress.warn(
            f"trl_text has no system field: dropped the system message of {dropped} pairs"
        )
    final = Path(path)
    with atomic_file(final, force=force) as temp:
        temp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return final


def pair_output_format(output_format: str, explicit: bool, option: str = "--output-format") -> str:
    """The pair format to write a pair file in: `output_format` if it is one, openai_dpo when
    none was asked for; a supervised format asked for by name is an error."""
    if output_format in PAIR_OUTPUT_FORMATS:
        return output_format
    if explicit:
        raise ConfigError(
            f"{option} {output_format} writes supervised examples, but the input holds "
            f"preference pairs; use {', '.join(PAIR_OUTPUT_FORMATS)}"
        )
    return "openai_dpo"


def run_convert_pairs(config: ConvertConfig) -> tuple[Path, int]:
    """`slmforge data convert` on a pair file; returns the path and the count."""
    if config.text_template is not None:
        raise ConfigError(
            "--text-template renders supervised examples; a preference file converts to "
            f"{', '.join(PAIR_OUTPUT_FORMATS)}"
        )
    fmt = pair_output_format(config.output_format, "output_format" in config.model_fields_set)
    check_output(config.out, config.force)
    options = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    pairs = read_preference_examples(config.input, options)
    return write_pairs(pairs, config.out, fmt, config.force), len(pairs)
