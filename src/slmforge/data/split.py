"""Deterministic, leak-free train/validation/test splits.

Examples are grouped by normalized prompt before shuffling, and whole groups are assigned to a
part, so a prompt asked twice can never be in training and in validation at once (that would
make validation loss look better than the model is). Rows written by `data augment` join their
original's group (`meta.group`), so a paraphrase never validates the row it came from.
Preference pairs split the same way: pairs that share a prompt stay in one part.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Protocol, TypeVar

from slmforge import progress
from slmforge.artifacts import artifact, source_of
from slmforge.config.data import ReadOptions, SplitConfig
from slmforge.data.formats import read_examples
from slmforge.data.preference import (
    PreferenceExample,
    is_preference_file,
    read_preference_examples,
)
from slmforge.data.writing import write_examples
from slmforge.errors import ConfigError, InputError

PARTS = ("train", "validation", "test")


class Grouped(Protocol):
    """What a split groups by: an example or a preference pair."""

    def prompt_key(self) -> str: ...
    def group_key(self) -> str: ...


Row = TypeVar("Row", bound=Grouped)


def part_size(name: str, value: float, total: int) -> int:
    """A ratio (< 1) of `total` or an absolute count (>= 1), checked to be usable."""
    if value == 0:
        return 0
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"--{name}: a count must be a whole number, got {value}")
        return int(value)
    size = round(value * total)
    if size == 0:
        raise ConfigError(
            f"--{name} {value} of {total} examples gives an empty {name} part; "
            "use a larger ratio or a count"
        )
    return size


def _groups(examples: list[Row]) -> list[list[Row]]:
    """Examples that share a prompt or an augmentation origin, joined transitively (a
    paraphrase of A that repeats B's prompt puts A, B and their variants in one group)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for example in examples:
        parent[root(example.prompt_key())] = root(example.group_key())
    grouped: dict[str, list[Row]] = defaultdict(list)
    for example in examples:
        grouped[root(example.prompt_key())].append(example)
    return list(grouped.values())


def split_examples(
    examples: list[Row], validation: float = 0.1, test: float = 0.0, seed: int = 42
) -> dict[str, list[Row]]:
    """Split into train/validation/test; same input and seed give the same parts.

    Parts are filled with whole prompt groups, so their sizes can exceed the request by the size
    of the last group taken."""
    total = len(examples)
    if total < 2:
        raise InputError(f"{total} examples are too few to split (need at least 2)")
    wanted = {
        "test": part_size("test", test, total),
        "validation": part_size("validation", validation, total),
    }
    if sum(wanted.values()) >= total:
        raise ConfigError(
            f"validation {wanted['validation']} + test {wanted['test']} examples "
            f"leave nothing to train on out of {total}"
        )
    groups = _groups(examples)
    random.Random(seed).shuffle(groups)
    parts: dict[str, list[Row]] = {name: [] for name in PARTS}
    queue = iter(groups)
    for name in ("test", "validation"):
        while len(parts[name]) < wanted[name] and (group := next(queue, None)) is not None:
            parts[name].extend(group)
    for group in queue:
        parts["train"].extend(group)
    for name, size in wanted.items():
        if size and not parts[name]:
            raise InputError(f"no prompts are left for the {name} part; use fewer {name} examples")
    if not parts["train"]:
        raise InputError(
            f"all {total} examples share {len(groups)} prompts; nothing is left to "
            "train on after keeping repeated prompts together"
        )
    return parts


def run_split(config: SplitConfig) -> dict[str, Path]:
    """`slmforge data split`: read, split and write the non-empty parts into `out_dir`, all at
    once (a temp folder renamed into place), with a manifest of the counts and seed."""
    options = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    pairs = config.input.exists() and is_preference_file(config.input, options)
    read = read_preference_examples if pairs else read_examples
    examples = read(config.input, options)
    parts = split_examples(examples, config.validation, config.test, config.seed)
    written: dict[str, Path] = {}
    with artifact(config.out_dir, "data_split", force=config.force) as art:
        for name, part in parts.items():
            if part:
                _write_part(part, art.path / f"{name}.jsonl")
                written[name] = config.out_dir / f"{name}.jsonl"
        art.manifest.source["data"] = source_of(config.input, kind="data")
        art.manifest.config = config.model_dump(mode="json")
        art.manifest.metrics = {f"{name}_examples": len(p) for name, p in parts.items()}
    counts = ", ".join(f"{name} {len(p)}" for name, p in parts.items() if p)
    progress.info(f"split {len(examples)} {'pairs' if pairs else 'examples'} into {counts}")
    return written


def _write_part(part: list, path: Path) -> None:
    """Examples as messages rows, pairs as OpenAI DPO rows."""
    if isinstance(part[0], PreferenceExample):
        from slmforge.data.preference_write import write_pairs

        write_pairs(part, path, "openai_dpo")
    else:
        write_examples(part, path, "messages")
