"""Write examples back out: one writer per output format (a registry), atomically, and
`slmforge data convert`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import atomic_file, check_output
from slmforge.config.data import PAIR_OUTPUT_FORMATS, ConvertConfig, ReadOptions
from slmforge.data.formats import Example, read_examples
from slmforge.errors import ConfigError, DataError, Finding, InputError

# -- writing -------------------------------------------------------------------------------
RecordWriter = Callable[[Example, "str | None"], dict[str, Any]]
WRITERS: dict[str, RecordWriter] = {}


def register_writer(name: str) -> Callable[[RecordWriter], RecordWriter]:
    def decorator(fn: RecordWriter) -> RecordWriter:
        WRITERS[name] = fn
        return fn

    return decorator


class _CannotWrite(Exception):
    """One example that the chosen output format cannot hold; becomes a Finding."""


def _with_meta(example: Example, row: dict[str, Any]) -> dict[str, Any]:
    """A record with the example's meta object, so origins survive a convert or split."""
    return {**row, "meta": example.meta} if example.meta else row


@register_writer("messages")
def _to_messages(example: Example, template: str | None) -> dict[str, Any]:
    messages = [openai_message(m) for m in example.messages]
    row: dict[str, Any] = {"messages": messages}
    if example.tools:
        row["tools"] = example.tools
    return _with_meta(example, row)


def openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """As OpenAI writes it: an assistant message that only calls tools has content null."""
    out = dict(message)
    if out.get("tool_calls") and not out["content"]:
        out["content"] = None
    return out


def _no_tools(example: Example, fmt: str) -> None:
    if example.uses_tools:
        raise _CannotWrite(
            f"has tool definitions or calls, which {fmt} cannot hold (write messages instead)"
        )


@register_writer("prompt_response")
def _to_prompt_response(example: Example, template: str | None) -> dict[str, str]:
    _no_tools(example, "prompt_response")
    if not example.is_single_turn():
        raise _CannotWrite(
            f"has {len(example.turns())} turns; prompt_response holds one user "
            "and one assistant message (write messages instead)"
        )
    return _with_meta(example, {"prompt": example.prompt, "response": example.response})


@register_writer("text")
def _to_text(example: Example, template: str | None) -> dict[str, str]:
    from slmforge.data.templates import TemplateError, render_text

    _no_tools(example, "a --text-template")
    try:
        return {"text": render_text(example, template or "")}
    except TemplateError as exc:
        raise _CannotWrite(str(exc)) from None


def write_examples(
    examples: list[Example],
    path: str | Path,
    fmt: str = "messages",
    text_template: str | None = None,
    force: bool = False,
) -> Path:
    """Write examples as jsonl in `fmt`, atomically; every example that `fmt` cannot hold is
    reported (with its source line) before anything is written."""
    from slmforge.data.templates import check_template

    if fmt not in WRITERS:
        raise InputError(f"unknown output format '{fmt}' (expected one of {', '.join(WRITERS)})")
    if fmt == "text":
        check_template(text_template)
    writer = WRITERS[fmt]
    lines, findings = [], []
    for example in examples:
        try:
            lines.append(json.dumps(writer(example, text_template), ensure_ascii=False))
        except _CannotWrite as exc:
            findings.append(
                Finding(
                    example.source,
                    example.line,
                    "messages",
                    str(exc),
                    "error",
                    f"cannot_write_{fmt}",
                )
            )
    if findings:
        raise DataError(findings)
    if fmt == "prompt_response" and (dropped := sum(e.system is not None for e in examples)):
        progress.warn(
            f"prompt_response has no system field: dropped the system message of {dropped} examples"
        )
    final = Path(path)
    with atomic_file(final, force=force) as temp:
        temp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return final


def run_convert(config: ConvertConfig) -> tuple[Path, int]:
    """`slmforge data convert`: read any format, write one; returns the path and the count.
    A preference file converts between pair formats (`data/preference_write.py`)."""
    from slmforge.data.preference import is_preference_file
    from slmforge.data.templates import check_template

    check_output(config.out, config.force)
    options = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    if config.input.exists() and is_preference_file(config.input, options):
        from slmforge.data.preference_write import run_convert_pairs

        return run_convert_pairs(config)
    fmt = config.output_format
    if fmt in PAIR_OUTPUT_FORMATS:
        raise ConfigError(
            f"--output-format {fmt} writes preference pairs, but {config.input} holds "
            "supervised examples; use messages, prompt_response or text"
        )
    if config.text_template is not None:
        if "output_format" in config.model_fields_set and fmt != "text":
            raise ConfigError(
                f"--text-template renders text; it cannot be used with --output-format {fmt}"
            )
        fmt = "text"
    if fmt == "text":
        check_template(config.text_template)
    examples = read_examples(config.input, options)
    return write_examples(examples, config.out, fmt, config.text_template, config.force), len(
        examples
    )
