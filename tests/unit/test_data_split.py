"""Deterministic, leak-free splits and their artifact folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from slmforge.artifacts import read_manifest
from slmforge.config.data import SplitConfig
from slmforge.data.formats import Example, read_examples
from slmforge.data.split import part_size, run_split, split_examples
from slmforge.errors import ConfigError, DataError, InputError, OutputExistsError


def _examples(prompts: list[str]) -> list[Example]:
    return [
        Example(
            [{"role": "user", "content": p}, {"role": "assistant", "content": f"a{i}"}], line=i + 1
        )
        for i, p in enumerate(prompts)
    ]


def _lines(parts: dict[str, list[Example]]) -> dict[str, list[int | None]]:
    return {name: [e.line for e in part] for name, part in parts.items()}


def test_same_seed_same_parts_other_seed_other_parts() -> None:
    examples = _examples([f"question {i}" for i in range(100)])
    first = _lines(split_examples(examples, 0.2, 0.1, seed=1))
    assert first == _lines(split_examples(examples, 0.2, 0.1, seed=1))
    assert first != _lines(split_examples(examples, 0.2, 0.1, seed=2))
    assert [len(first[p]) for p in ("train", "validation", "test")] == [70, 20, 10]
    assert sorted(line for part in first.values() for line in part) == list(range(1, 101))


def test_repeated_prompts_stay_in_one_part() -> None:
    prompts = [f"q{i % 10}" if i % 2 else f"Q{i % 10}  " for i in range(60)]  # 10 prompts x 6
    parts = split_examples(_examples(prompts), validation=0.3, seed=3)
    keys = {name: {e.prompt_key() for e in part} for name, part in parts.items()}
    assert keys["train"] and keys["validation"]
    assert not keys["train"] & keys["validation"]
    assert all(len(part) % 6 == 0 for part in parts.values())


def test_counts_and_ratios() -> None:
    assert part_size("validation", 0.25, 40) == 10
    assert part_size("validation", 7, 40) == 7
    assert part_size("test", 0, 40) == 0
    with pytest.raises(ConfigError, match="whole number"):
        part_size("test", 2.5, 40)
    with pytest.raises(ConfigError, match="empty validation part"):
        part_size("validation", 0.01, 20)


def test_nothing_left_to_train_on() -> None:
    with pytest.raises(ConfigError, match="leave nothing to train on"):
        split_examples(_examples(["a", "b", "c"]), validation=2, test=1)
    with pytest.raises(InputError, match="too few"):
        split_examples(_examples(["a"]))
    with pytest.raises(InputError, match="nothing is left to train on"):
        split_examples(_examples(["same"] * 5), validation=1)


def test_run_split_writes_parts_and_manifest(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(20)]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    written = run_split(SplitConfig(input=source, out_dir=tmp_path / "out", validation=4))
    assert set(written) == {"train", "validation"}  # the empty test part is not written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "slmforge.json",
        "train.jsonl",
        "validation.jsonl",
    ]
    valid = [json.loads(line) for line in written["validation"].read_text().splitlines()]
    assert len(valid) == 4 and "messages" in valid[0]
    manifest = read_manifest(tmp_path / "out")
    assert manifest is not None and manifest.kind == "data_split"
    assert manifest.metrics == {"train_examples": 16, "validation_examples": 4, "test_examples": 0}
    together = read_examples(written["train"]) + read_examples(written["validation"])
    assert sorted(e.prompt for e in together) == sorted(r["prompt"] for r in rows)


def test_run_split_refuses_existing_out_dir_and_bad_data(tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(10)]
    )
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError):
        run_split(SplitConfig(input=source, out_dir=tmp_path / "out"))
    run_split(SplitConfig(input=source, out_dir=tmp_path / "out", force=True))
    assert (tmp_path / "out" / "train.jsonl").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    with pytest.raises(DataError):
        run_split(SplitConfig(input=bad, out_dir=tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
