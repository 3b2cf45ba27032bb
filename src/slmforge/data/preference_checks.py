"""Which shape a data file has (preference pairs or supervised examples), cheaply, and whether
pairs leave room for an answer within `max_seq_len`. Re-exported by `data/preference.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from slmforge.config.data import ReadOptions
from slmforge.data.containers import CONTAINERS, Record, container_for
from slmforge.data.formats import detect_record_format, pair_format_for
from slmforge.data.shapes import (
    PAIR_FORMAT_KEYS,
    example_row_message,
    pair_row_message,
)
from slmforge.errors import Finding, InputError

_BATCH = 1024

if TYPE_CHECKING:
    from slmforge.data.preference import PreferenceExample


def record_keys(record: Record | None, columns: list[str] | None) -> list[str]:
    if columns is not None:
        return columns
    return list(record.value) if record is not None and isinstance(record.value, dict) else []


# -- what kind of file is it ----------------------------------------------------------------
def _jsonl_records(path: Path) -> Iterator[Record]:
    """The records of a JSON Lines file one at a time; a line that does not parse is skipped
    (the reader reports it)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield Record(
                    number, json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                )
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue


def _records(path: Path, options: ReadOptions) -> tuple[Iterator[Record], list[str] | None]:
    reader = container_for(path, options.input_format)
    if reader is CONTAINERS["jsonl"]:
        return _jsonl_records(path), None
    records, columns = reader(path, [])
    return iter(records), columns


def _shape(keys: list[str], options: ReadOptions) -> tuple[str, str] | None:
    """("pairs", format) or ("examples", format) of a record with `keys`; None if neither."""
    if (pair := pair_format_for(keys, options)) is not None:
        return "pairs", pair
    if (example := detect_record_format(keys, options)) is not None:
        return "examples", example
    return None


def is_preference_file(path: str | Path, options: ReadOptions | None = None) -> bool:
    """Whether `path` holds preference pairs, from its first record (or its columns) only."""
    options = options or ReadOptions()
    if options.input_format in PAIR_FORMAT_KEYS:
        return True
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    records, columns = _records(path, options)
    first = next((r for r in records if isinstance(r.value, dict)), None)
    shape = _shape(record_keys(first, columns), options)
    return shape is not None and shape[0] == "pairs"


def shape_mismatch(
    path: str | Path,
    want: Literal["pairs", "examples"],
    options: ReadOptions | None = None,
) -> Finding | None:
    """A finding for the first record that has the other shape than `want` (a supervised row
    in a pair file or the reverse), or None. Records of neither shape are left to the reader's
    findings."""
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    records, columns = _records(path, options)
    if columns is not None:  # a table has one shape: its columns'
        records = iter([Record(None, dict.fromkeys(columns))])
    for record in records:
        if not isinstance(record.value, dict):
            continue
        shape = _shape(list(record.value), options)
        if shape is None or shape[0] == want:
            continue
        message = (
            pair_row_message(shape[1], "supervised fine-tuning (objective sft)")
            if shape[0] == "pairs"
            else example_row_message(shape[1])
        )
        return Finding(str(path), record.line, None, message, "error", "wrong_shape")
    return None


# -- token lengths and room for the answers --------------------------------------------------
def _render(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool
) -> str:
    if getattr(tokenizer, "chat_template", None):
        from slmforge.models.tool_format import render_chat

        return render_chat(tokenizer, messages, tools, generation_prompt=generation_prompt)
    return "\n".join(m["content"] for m in messages)


def _count(texts: list[str], tokenizer: Any) -> list[int]:
    """Token counts, in batches because the fast tokenizers encode in parallel."""
    counts: list[int] = []
    for start in range(0, len(texts), _BATCH):
        # the chat template already holds the special tokens; don't add a second BOS
        encoded = tokenizer(texts[start : start + _BATCH], add_special_tokens=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts


def prompt_token_counts(pairs: list[PreferenceExample], tokenizer: Any) -> list[int]:
    """Tokens of each pair's prompt as the model sees it (chat template, generation prompt)."""
    return _count([_render(tokenizer, p.prompt, p.tools, True) for p in pairs], tokenizer)


@dataclass(frozen=True)
class PairTokens:
    """Token lengths of one pair: its prompt (with the generation prompt), and each side's
    whole conversation (prompt + answer, what must fit in max_seq_len)."""

    prompt: int
    chosen: int
    rejected: int

    @property
    def chosen_answer(self) -> int:
        return max(self.chosen - self.prompt, 0)

    @property
    def rejected_answer(self) -> int:
        return max(self.rejected - self.prompt, 0)


def pair_token_lengths(pairs: list[PreferenceExample], tokenizer: Any) -> list[PairTokens]:
    prompts = prompt_token_counts(pairs, tokenizer)
    chosen = _count(
        [_render(tokenizer, p.chosen_messages, p.tools, False) for p in pairs], tokenizer
    )
    rejected = _count(
        [_render(tokenizer, p.rejected_messages, p.tools, False) for p in pairs], tokenizer
    )
    return [PairTokens(*lengths) for lengths in zip(prompts, chosen, rejected, strict=True)]


def prompt_room_findings(
    pairs: list[PreferenceExample], tokenizer: Any, max_seq_len: int, min_answer_tokens: int = 1
) -> list[Finding]:
    """An error for each pair whose prompt leaves fewer than `min_answer_tokens` tokens for an
    answer within `max_seq_len` (training would have no answer token to compare)."""
    findings = []
    for pair, tokens in zip(pairs, prompt_token_counts(pairs, tokenizer), strict=True):
        room = max_seq_len - tokens
        if room < min_answer_tokens:
            findings.append(
                Finding(
                    pair.source,
                    pair.line,
                    pair.prompt_field,
                    f"the prompt is {tokens} tokens, leaving {max(room, 0)} of --max-seq-len "
                    f"{max_seq_len} for the answers (need at least {min_answer_tokens}); "
                    "shorten the prompt or raise --max-seq-len",
                    "error",
                    "no_answer_room",
                )
            )
    return findings
