"""Stats: counts, turns, characters, token percentiles and the histogram."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_helpers import word_tokenizer
from slmforge.data.formats import Example
from slmforge.data.stats import (
    Bucket,
    compute_stats,
    histogram,
    load_tokenizer,
    percentile,
    token_lengths,
)
from slmforge.errors import ModelError


def _example(prompt: str, response: str, system: str | None = None) -> Example:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return Example(messages)


def test_counts_turns_characters_and_repeats() -> None:
    multi = Example(
        [
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
            {"role": "assistant", "content": "e"},
        ]
    )
    stats = compute_stats([_example("Hi", "Hello"), _example("hi ", "Yo", "S"), multi])
    assert stats.examples == 3
    assert (stats.turns.min, stats.turns.mean, stats.turns.max) == (2, 2.67, 4)
    assert (stats.characters.min, stats.characters.max) == (5, 7)
    assert stats.repeated_prompts == 1
    assert stats.system_messages == 1
    assert stats.tokens is None


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7


def test_histogram_buckets_cover_every_value() -> None:
    buckets = histogram([0, 1, 5, 19, 19], buckets=4)
    assert buckets == [Bucket(0, 4, 2), Bucket(5, 9, 1), Bucket(10, 14, 0), Bucket(15, 19, 2)]
    assert sum(b.count for b in histogram(list(range(1000)))) == 1000
    assert histogram([]) == []


def test_token_stats_with_a_tokenizer(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(word_tokenizer(tmp_path / "tok")))
    examples = [_example(" ".join(["w"] * n), "x") for n in range(1, 11)]
    lengths = token_lengths(examples, tokenizer)
    assert lengths == [n + 5 for n in range(1, 11)]  # 4 markers + 1 response word
    stats = compute_stats(examples, tokenizer)
    assert stats.tokens is not None
    assert stats.tokens.percentiles == {"p50": 10, "p90": 14, "p95": 15, "p99": 15}
    assert stats.tokens.max == 15
    assert sum(b.count for b in stats.tokens.histogram) == 10
    assert stats.to_dict()["tokens"]["max"] == 15


def test_bad_tokenizer_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "nothing-here"))
