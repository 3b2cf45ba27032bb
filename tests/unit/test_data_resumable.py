"""Resumable outputs (`data/resumable.py`): synth and augment repair a last line a crash cut
off the same way, before they resume from the rows that are left."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from slmforge import progress
from slmforge.data.augment import _read_existing
from slmforge.data.synth import read_rows

ROWS = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(3)]
WHOLE = "".join(json.dumps(row) + "\n" for row in ROWS)


def _synth_rows(out: Path) -> list[tuple[str, str]]:
    return read_rows(out, repair=True)


def _augment_rows(out: Path) -> list[tuple[str, str]]:
    return [(ex.prompt, ex.response) for ex in _read_existing(out, skip=0)]


@pytest.mark.parametrize("resume", [_synth_rows, _augment_rows], ids=["synth", "augment"])
@pytest.mark.parametrize(
    ("tail", "expected", "warned"),
    [
        ('{"prompt": "Question 3?", "resp', WHOLE, True),  # cut off mid-row: dropped
        ("", WHOLE, False),  # a whole file: left alone
    ],
    ids=["half-row", "whole"],
)
def test_both_commands_repair_a_cut_off_last_line_alike(
    tmp_path, resume, tail, expected, warned
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(WHOLE + tail, encoding="utf-8")
    log = io.StringIO()
    progress.configure("json", stream=log)
    try:
        rows = resume(out)
    finally:
        progress.configure("plain")
    assert out.read_text(encoding="utf-8") == expected
    assert rows == [(r["prompt"], r["response"]) for r in ROWS]
    assert ("cut off mid-write" in log.getvalue()) is warned


@pytest.mark.parametrize("resume", [_synth_rows, _augment_rows], ids=["synth", "augment"])
def test_both_commands_keep_a_whole_last_row_without_its_newline(tmp_path, resume) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(WHOLE.removesuffix("\n"), encoding="utf-8")
    rows = resume(out)
    assert out.read_text(encoding="utf-8") == WHOLE
    assert len(rows) == len(ROWS)
