"""`app compare`'s speed figures and Markdown table (`app/batch.py`, `app/compare_report.py`):
ratios, missing figures, and model text that cannot break the table."""

from __future__ import annotations

from slmforge.app.batch import speed
from slmforge.app.compare_report import answers_table, cell, speed_table


def _perf(ttft: float | None, rate: float | None) -> dict:
    figure = {"n": 2, "mean": ttft, "p50": ttft, "p95": ttft}
    return {"ttft_s": figure, "tokens_per_s": {**figure, "mean": rate, "p50": rate, "p95": rate}}


def test_speed_ratios_are_local_over_cloud_and_none_without_figures() -> None:
    summary = {
        "results": {
            "local": {"performance": _perf(0.05, 40.0)},
            "cloud": {"performance": _perf(0.5, None)},
        }
    }
    figures = speed(summary)
    assert figures["ttft_s"]["local_over_cloud"]["p50"] == 0.1
    assert figures["tokens_per_s"]["local_over_cloud"]["mean"] is None
    lines = speed_table({"speed": figures})
    assert "| time to first token p95 (s) | 0.050 | 0.500 | 0.10x |" in lines
    assert "| decode rate mean (tokens/s) | 40.0 | n/a | n/a |" in lines


def test_answers_cannot_break_the_table() -> None:
    assert cell("a | b\r\nc") == "a \\| b<br>c"
    records = [
        {
            "row": 0,
            "question": "q|1",
            "local": {"text": "line 1\nline 2 | more", "error": None},
            "cloud": {"text": "", "error": "HTTP 503"},
            "similarity": None,
            "preference": {"preferred": None, "reason": "a side gave no answer"},
        }
    ]
    table = answers_table(records, judged=True)
    assert table[2] == (
        "| 1 | q\\|1 | line 1<br>line 2 \\| more | **error:** HTTP 503 | n/a | "
        "no verdict: a side gave no answer |"
    )
    assert all(line.count("|") - line.count("\\|") == 7 for line in table)
