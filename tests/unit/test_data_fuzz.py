"""Property tests: whatever bytes or JSON a file holds, readers raise only slmforge errors."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmforge.config.data import ReadOptions
from slmforge.data.formats import read_examples, read_with_findings
from slmforge.errors import DataError, SlmforgeError

FORMATS = ["auto", "prompt_response", "messages", "alpaca", "sharegpt"]
SUFFIXES = [".jsonl", ".csv", ".parquet"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "prompt",
                    "response",
                    "messages",
                    "role",
                    "content",
                    "conversations",
                    "from",
                    "value",
                    "instruction",
                    "input",
                    "output",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
fuzz = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@contextmanager
def _file(data: bytes, suffix: str) -> Iterator[Path]:
    # A fresh folder per example: hypothesis calls the test many times within one tmp_path.
    with tempfile.TemporaryDirectory(prefix="slmforge-fuzz-") as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(data)
        yield path


@fuzz
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), fmt=st.sampled_from(FORMATS))
def test_arbitrary_bytes_raise_only_slmforge_errors(data: bytes, suffix: str, fmt: str) -> None:
    with _file(data, suffix) as path:
        try:
            examples, findings = read_with_findings(path, ReadOptions(input_format=fmt))
        except SlmforgeError:
            return
        assert examples or findings
        try:
            read_examples(path, ReadOptions(input_format=fmt))
        except DataError as err:
            assert err.findings


@fuzz
@given(records=st.lists(json_values, min_size=1, max_size=5), fmt=st.sampled_from(FORMATS))
def test_arbitrary_json_records_are_examples_or_findings(records: list, fmt: str) -> None:
    with _file("".join(json.dumps(r) + "\n" for r in records).encode(), ".jsonl") as path:
        examples, findings = read_with_findings(path, ReadOptions(input_format=fmt))
        _check(path, records, fmt, examples, findings)


def _check(path: Path, records: list, fmt: str, examples, findings) -> None:
    errors = [f for f in findings if f.severity == "error"]
    good, bad = {e.line for e in examples}, {f.line for f in errors}
    if not any(f.line is None or f.rule == "unknown_format" for f in errors):
        # Without a file-level problem, each record is an example or has errors, never both.
        assert good | bad == set(range(1, len(records) + 1))
        assert not good & bad
    for example in examples:
        assert example.messages[-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in example.messages)
    if errors:
        try:
            read_examples(path, ReadOptions(input_format=fmt))
        except DataError as err:
            assert err.findings == findings
        else:
            raise AssertionError("read_examples accepted a file with errors")
