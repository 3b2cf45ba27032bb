"""Describe a data set: sizes, turns, characters, token lengths and repeated prompts; for
preference pairs also each part's lengths and how the chosen answers compare to the rejected.

Token lengths are what matter for `max_seq_len` in fine-tuning, so they are counted on the text
the model will actually see: the tokenizer's chat template rendering when it has one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from slmforge.data.formats import Example
from slmforge.data.preference import PreferenceExample, pair_token_lengths
from slmforge.errors import MissingDependencyError, ModelError

PERCENTILES = (50, 90, 95, 99)
HISTOGRAM_BUCKETS = 10
_BATCH = 1024


def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer from a local folder or hub id; remote code is never run."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MissingDependencyError("transformers", "train", "Counting tokens") from None
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from '{name}': {exc}") from None


def _rendering(example: Example, tokenizer: Any) -> str:
    if getattr(tokenizer, "chat_template", None):
        from slmforge.models.tool_format import render_chat

        return render_chat(tokenizer, example.messages, example.tools)
    return "\n".join(m["content"] for m in example.messages)


def token_lengths(examples: Sequence[Example], tokenizer: Any) -> list[int]:
    """Token count of each example, in batches because the fast tokenizers encode in parallel."""
    lengths: list[int] = []
    for start in range(0, len(examples), _BATCH):
        texts = [_rendering(e, tokenizer) for e in examples[start : start + _BATCH]]
        # The chat template already holds the special tokens; don't add a second BOS.
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths.extend(len(ids) for ids in encoded)
    return lengths


@dataclass
class Summary:
    min: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Sequence[int]) -> Summary:
        if not values:
            return cls(0, 0.0, 0)
        return cls(min(values), round(sum(values) / len(values), 2), max(values))


@dataclass
class Bucket:
    low: int  # inclusive
    high: int  # inclusive
    count: int


@dataclass
class TokenStats:
    percentiles: dict[str, int]
    max: int
    mean: float
    histogram: list[Bucket]


@dataclass
class DataStats:
    examples: int
    turns: Summary
    characters: Summary
    repeated_prompts: int  # examples whose prompt already appeared earlier in the file
    system_messages: int
    tool_examples: int = 0  # examples that declare tools or call them
    tool_calls: int = 0
    functions_called: dict[str, int] = field(default_factory=dict)  # name -> calls, most first
    tokens: TokenStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile: a value that really occurs, which reads better for lengths."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def histogram(values: Sequence[int], buckets: int = HISTOGRAM_BUCKETS) -> list[Bucket]:
    """Equal-width integer buckets from 0 to the max value."""
    if not values:
        return []
    top = max(values)
    width = max(1, math.ceil((top + 1) / buckets))
    counts = Counter(v // width for v in values)
    count = math.ceil((top + 1) / width)
    return [Bucket(i * width, (i + 1) * width - 1, counts.get(i, 0)) for i in range(count)]


def token_stats(lengths: Sequence[int]) -> TokenStats:
    ordered = sorted(lengths)
    return TokenStats(
        percentiles={f"p{p}": percentile(ordered, p) for p in PERCENTILES},
        max=ordered[-1],
        mean=round(sum(ordered) / len(ordered), 2),
        histogram=histogram(ordered),
    )


def repeated_prompt_count(examples: Sequence[Example] | Sequence[PreferenceExample]) -> int:
    counts = Counter(e.prompt_key() for e in examples)
    return sum(n - 1 for n in counts.values())


def tool_stats(examples: Sequence[Example]) -> dict[str, Any]:
    calls = [
        call["function"]["name"]
        for e in examples
        for m in e.messages
        for call in m.get("tool_calls") or []
    ]
    return {
        "tool_examples": sum(e.uses_tools for e in examples),
        "tool_calls": len(calls),
        "functions_called": dict(Counter(calls).most_common()),
    }


def compute_stats(examples: Sequence[Example], tokenizer: Any | None = None) -> DataStats:
    """Stats of `examples`; token stats only when a tokenizer is given."""
    stats = DataStats(
        examples=len(examples),
        turns=Summary.of([len(e.turns()) for e in examples]),
        characters=Summary.of([sum(len(m["content"]) for m in e.messages) for e in examples]),
        repeated_prompts=repeated_prompt_count(examples),
        system_messages=sum(e.system is not None for e in examples),
        **tool_stats(examples),
    )
    if tokenizer is not None and examples:
        stats.tokens = token_stats(token_lengths(examples, tokenizer))
    return stats


# -- preference pairs ---------------------------------------------------------------------------
@dataclass
class PairStats:
    pairs: int
    prompt_turns: Summary  # prompt messages without the system message
    characters: dict[str, Summary]  # prompt, chosen, rejected
    repeated_prompts: int  # pairs whose prompt already appeared earlier in the file
    repeated_prompt_share: float  # repeated_prompts / pairs
    chosen_rejected_ratio: float  # mean of chosen/rejected answer length (tokens, else chars)
    system_messages: int
    tool_pairs: int  # pairs that declare tools or call them
    tokens: dict[str, TokenStats] | None = None  # prompt, chosen, rejected answers; longest side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) for m in messages)


def compute_pair_stats(
    pairs: Sequence[PreferenceExample], tokenizer: Any | None = None
) -> PairStats:
    """Stats of preference pairs; token stats only when a tokenizer is given. With tokens the
    chosen/rejected ratio is of answer tokens, else of answer characters."""
    chosen = [_chars(p.chosen) for p in pairs]
    rejected = [_chars(p.rejected) for p in pairs]
    tokens = None
    if tokenizer is not None and pairs:
        lengths = pair_token_lengths(list(pairs), tokenizer)
        chosen = [t.chosen_answer for t in lengths]
        rejected = [t.rejected_answer for t in lengths]
        tokens = {
            "prompt": token_stats([t.prompt for t in lengths]),
            "chosen": token_stats(chosen),
            "rejected": token_stats(rejected),
            "longest_side": token_stats([max(t.chosen, t.rejected) for t in lengths]),
        }
    ratios = [c / max(r, 1) for c, r in zip(chosen, rejected, strict=True)]
    repeated = repeated_prompt_count(pairs)
    return PairStats(
        pairs=len(pairs),
        prompt_turns=Summary.of([len(p.prompt_turns()) for p in pairs]),
        characters={
            "prompt": Summary.of([_chars(p.prompt) for p in pairs]),
            "chosen": Summary.of([_chars(p.chosen) for p in pairs]),
            "rejected": Summary.of([_chars(p.rejected) for p in pairs]),
        },
        repeated_prompts=repeated,
        repeated_prompt_share=round(repeated / len(pairs), 4) if pairs else 0.0,
        chosen_rejected_ratio=round(sum(ratios) / len(ratios), 3) if ratios else 0.0,
        system_messages=sum(p.system is not None for p in pairs),
        tool_pairs=sum(p.uses_tools for p in pairs),
        tokens=tokens,
    )
