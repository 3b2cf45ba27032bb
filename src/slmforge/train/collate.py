"""Tokenization with assistant-only labels, packing, and batches.

Labels are -100 everywhere except on assistant turns (their content, their tool calls, and the
end-of-turn markers that follow, so the model learns to stop; never tool replies). Spans are
found in character space on the one rendering of the whole conversation, then mapped to tokens
with the tokenizer's offsets, so any Hugging Face chat template works, without per-format code.
Tools go through `models/tool_format.py` (the template's own tool syntax, or a Hermes-style
fallback for templates without one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from slmforge.data.templates import check_template
from slmforge.errors import InputError
from slmforge.models.tool_format import render_chat

IGNORE = -100
Tools = list[dict[str, Any]] | None  # function definitions, in OpenAI's shape


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, tools: Tools
) -> str:
    return render_chat(tokenizer, messages, tools, generation_prompt)


def _extend_over_stops(text: str, end: int, stops: list[str]) -> int:
    """Move `end` past end-of-turn markers (and the whitespace between them) that follow it."""
    while True:
        gap = len(text[end:]) - len(text[end:].lstrip(" \n"))
        marker = next((s for s in stops if text.startswith(s, end + gap)), None)
        if marker is None:
            return end
        end += gap + len(marker)


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], stops: list[str], tools: Tools = None
) -> tuple[str, list[range]]:
    """The full rendering and the character ranges of each assistant turn in it.

    A turn's span starts where the rendering of the conversation before it, with the generation
    prompt, ends (so the model is never trained on the assistant header) and runs past the
    answer and the end-of-turn markers that follow it (so the model learns to stop). A turn
    that calls tools runs to where the conversation rendered through it ends (the template
    writes the calls in its own syntax); tool replies are never trained on.
    """
    full = _render(tokenizer, messages, False, tools)
    spans: list[range] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:index], True, tools) if index else ""
        start = len(prefix) if index and full.startswith(prefix) else cursor
        if message.get("tool_calls"):
            through = _render(tokenizer, messages[: index + 1], False, tools).rstrip()
            if not full.startswith(through) or len(through) <= start:
                raise InputError("the chat template does not render tool calls as a prefix")
            end = _extend_over_stops(full, len(through), stops)
        else:
            content = message["content"].strip()
            found = full.find(content, start)
            if found < 0:
                raise InputError("the chat template does not render assistant content verbatim")
            start = min(start, found)
            end = _extend_over_stops(full, found + len(content), stops)
        spans.append(range(start, end))
        cursor = end
    return full, spans


def template_spans(template: str, messages: list[dict[str, str]]) -> tuple[str, list[range]]:
    """Render a `--text-template` ({system}, {prompt}, {response}) and the response's span."""
    template = check_template(template)
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) != 2:
        raise InputError(
            "--text-template renders single-turn examples only (one user, one assistant)"
        )
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    head, tail = template.split("{response}", 1)

    def fill(part: str) -> str:
        return part.replace("{system}", system).replace("{prompt}", turns[0]["content"])

    prefix = fill(head)
    text = prefix + turns[1]["content"] + fill(tail)
    return text, [range(len(prefix), len(text))]


def encode(
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_seq_len: int,
    train_on_prompt: bool = False,
    text_template: str | None = None,
    stops: list[str] | None = None,
    tools: Tools = None,
) -> Encoded:
    """Token ids and labels for one conversation, truncated to `max_seq_len`."""
    if text_template is not None:
        text, spans = template_spans(text_template, messages)
    else:
        text, spans = assistant_spans(tokenizer, messages, stops or [], tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(enc["input_ids"])[:max_seq_len]
    offsets = enc["offset_mapping"][:max_seq_len]
    if train_on_prompt:
        return Encoded(input_ids, list(input_ids))
    labels = [
        token if any(start in span for span in spans) else IGNORE
        for token, (start, _end) in zip(input_ids, offsets, strict=True)
    ]
    return Encoded(input_ids, labels)


def pack(examples: list[Encoded], max_seq_len: int) -> list[list[Encoded]]:
    """First-fit-decreasing bins of whole examples, each bin at most `max_seq_len` tokens."""
    bins: list[list[Encoded]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        size = len(example.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            bins.append([example])
            room.append(max_seq_len - size)
        else:
            bins[slot].append(example)
            room[slot] -= size
    return bins


def collate(rows: list[list[Encoded]], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a micro-batch, without an attention mask.

    Padding follows each row's tokens, so under the causal mask no real token attends to it, and
    its positions are never scored: a padding mask would change no trained logit, but it would
    make transformers build a batch x seq x seq mask and leave SDPA's causal kernel. Unpacked
    rows count positions on through their padding (one sequence per row). Packed rows get
    positions that restart at 0 for each example: transformers then builds a block-diagonal
    causal mask, so packed examples never attend to each other; padding forms its own block.
    """
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids = [t for e in row for t in e.input_ids]
        row_labels = [t for e in row for t in e.labels]
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        labels.append(row_labels + [IGNORE] * pad)
        if packed:
            positions.append([p for e in row for p in range(len(e.input_ids))] + list(range(pad)))
        else:
            positions.append(list(range(width)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
    }


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """A deterministic permutation per epoch, so a resumed run sees the same order."""
    order = list(range(count))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def length_grouped_order(lengths: list[int], seed: int, epoch: int, per_step: int) -> list[int]:
    """The epoch's order with rows of similar length side by side, so micro-batches pad little.

    Hugging Face's `group_by_length`: the shuffled order (`epoch_order`) is cut into mega-batches
    of up to 50 optimizer steps, each sorted longest first, and the longest row of all moves to
    the front, so a step that does not fit in memory fails at once. A pure function of its
    arguments, so a resumed run sees the same order."""
    order = epoch_order(len(lengths), seed, epoch)
    size = per_step * max(1, min(len(lengths) // (per_step * 4), 50))
    megas = [
        sorted(order[start : start + size], key=lambda i: lengths[i], reverse=True)
        for start in range(0, len(order), size)
    ]
    if megas:
        longest = max(range(len(megas)), key=lambda m: lengths[megas[m][0]])
        megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [index for mega in megas for index in mega]


def step_batches(
    rows: list[list[Encoded]], order: list[int], batch_size: int, grad_accum: int
) -> list[list[list[list[Encoded]]]]:
    """Group rows into optimizer steps of `grad_accum` micro-batches; drop the ragged tail."""
    per_step = batch_size * grad_accum
    steps = []
    for start in range(0, len(order) - per_step + 1, per_step):
        chosen = [rows[i] for i in order[start : start + per_step]]
        steps.append([chosen[i : i + batch_size] for i in range(0, per_step, batch_size)])
    return steps
