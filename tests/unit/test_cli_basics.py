"""The CLI skeleton: version, help, the generated reference, error mapping, JSON progress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import slmforge
from slmforge.cli.main import app, main

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"slmforge {slmforge.__version__}"


def test_help_lists_every_verb(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for verb in ("data", "models", "finetune", "merge", "chat"):
        assert verb in out


def test_cli_reference_is_current():
    """docs/cli.md is generated from the CLI; regenerate it when options change."""
    from slmforge.cli.docs import render

    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(app), (
        "run: python -m slmforge.cli.docs > docs/cli.md"
    )


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    code, _, err = _run(
        ["data", "convert", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")],
        capsys,
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.jsonl" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = _run(
        [
            "--debug",
            "data",
            "convert",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
        capsys,
    )
    assert code == 2 and "Traceback" in err


def test_json_log_format_is_one_object_per_line(tmp_path):
    out = tmp_path / "travel.jsonl"
    subprocess.run(
        [sys.executable, "-m", "slmforge", "data", "sample", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmforge",
            "--log-format",
            "json",
            "data",
            "split",
            str(out),
            "--out-dir",
            str(tmp_path / "split"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert events and all("event" in e and "time" in e for e in events)
    assert any("split 200 examples" in e.get("message", "") for e in events)
