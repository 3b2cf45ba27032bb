"""Containers: files -> raw records with line numbers, before any format is applied.

One reader per kind of file (JSON Lines, CSV, Parquet, a saved Hugging Face dataset), registered
by name and file suffix. Readers report what they cannot read as findings and keep going, so one
pass shows every bad line. `formats.py` turns the records into chat examples.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import Finding, InputError, MissingDependencyError


@dataclass
class Record:
    line: int | None
    value: Any


ContainerReader = Callable[[Path, list[Finding]], tuple[list[Record], list[str] | None]]
CONTAINERS: dict[str, ContainerReader] = {}
_SUFFIXES: dict[str, str] = {}


def register_container(name: str, *suffixes: str) -> Callable[[ContainerReader], ContainerReader]:
    def decorator(fn: ContainerReader) -> ContainerReader:
        CONTAINERS[name] = fn
        _SUFFIXES.update(dict.fromkeys(suffixes, name))
        return fn

    return decorator


def bad(path: Path, line: int | None, message: str, rule: str) -> Finding:
    return Finding(str(path), line, None, message, "error", rule)


@register_container("jsonl", ".jsonl", ".json", ".ndjson")
def _read_jsonl(path: Path, findings: list[Finding]) -> tuple[list[Record], None]:
    records = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            # utf-8-sig on the first line drops the BOM some editors write.
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            findings.append(
                bad(
                    path,
                    number,
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                    "encoding",
                )
            )
            continue
        try:
            records.append(Record(number, json.loads(text)))
        except json.JSONDecodeError as exc:
            findings.append(
                bad(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}", "invalid_json")
            )
        except RecursionError:
            findings.append(bad(path, number, "invalid JSON: nested too deeply", "invalid_json"))
    return records, None


@register_container("csv", ".csv")
def _read_csv(path: Path, findings: list[Finding]) -> tuple[list[Record], list[str] | None]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        findings.append(
            bad(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})", "encoding")
        )
        return [], None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        columns = list(reader.fieldnames or [])
        # csv gives the line where a row ends; that is the row's line for one-line rows.
        records = [Record(reader.line_num, dict(row)) for row in reader]
    except csv.Error as exc:
        findings.append(bad(path, reader.line_num, f"malformed CSV: {exc}", "invalid_csv"))
        return records, None
    return records, columns


@register_container("parquet", ".parquet", ".pq")
def _read_parquet(path: Path, findings: list[Finding]) -> tuple[list[Record], list[str] | None]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        findings.append(bad(path, None, f"not a readable Parquet file ({exc})", "invalid_file"))
        return [], None
    rows = table.to_pylist()
    return [Record(i, row) for i, row in enumerate(rows, start=1)], list(table.column_names)


@register_container("hf_dataset")
def _read_hf_dataset(path: Path, findings: list[Finding]) -> tuple[list[Record], list[str]]:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError("datasets", "train", "Reading a saved dataset") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a saved Hugging Face dataset folder ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if "train" not in loaded and len(splits) != 1:
            raise InputError(
                f"{path}: dataset has splits {', '.join(splits)}; point at one split "
                "folder or name one 'train'"
            )
        loaded = loaded["train" if "train" in loaded else splits[0]]
    rows = loaded.to_list()
    return [Record(i, row) for i, row in enumerate(rows, start=1)], list(loaded.column_names)


def container_for(path: Path, input_format: str) -> ContainerReader:
    """The reader named by `input_format`, else the one for the path's suffix (jsonl default)."""
    if input_format in CONTAINERS:
        return CONTAINERS[input_format]
    if path.is_dir():
        return CONTAINERS["hf_dataset"]
    return CONTAINERS[_SUFFIXES.get(path.suffix.lower(), "jsonl")]
