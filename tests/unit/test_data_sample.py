"""The built-in travel sample: deterministic, clean, varied, and importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.data.formats import normalize_text
from slmforge.data.sample import DESTINATIONS, sample_pairs, write_sample
from slmforge.errors import OutputExistsError


def test_about_200_unique_single_line_pairs() -> None:
    pairs = sample_pairs()
    assert 180 <= len(pairs) <= 220
    assert len({normalize_text(p["prompt"]) for p in pairs}) == len(pairs)
    assert all(set(p) == {"prompt", "response"} for p in pairs)
    assert all(p["prompt"].strip() and p["response"].strip() for p in pairs)
    assert pairs == sample_pairs()


def test_every_destination_appears_and_text_is_varied() -> None:
    pairs = sample_pairs()
    assert len(DESTINATIONS) >= 40
    for dest in DESTINATIONS:
        assert sum(dest.name in p["prompt"] for p in pairs) >= 4, dest.name
    assert {"prompt": "What's a must-see in Lisbon?"}.items() <= pairs[0].items()
    assert (
        len(
            {
                p["prompt"].replace(d.name, "X")
                for p in pairs
                for d in DESTINATIONS
                if d.name in p["prompt"]
            }
        )
        >= 15
    )  # question phrasings
    assert all(1 <= p["response"].count(". ") + 1 <= 4 for p in pairs)


def test_write_sample_jsonl_and_force(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "travel.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == sample_pairs()
    with pytest.raises(OutputExistsError):
        write_sample(path)
    write_sample(path, force=True)


def test_importable_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from slmforge.data.sample import sample_pairs; print(len(sample_pairs()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(sample_pairs())
