"""Check data files before training: every problem with its file, line, field and what was
expected. Preference pair files (`data/preference.py`) are checked too: the files are read as
pairs when the first one holds pairs, and the rules below see pairs instead of examples.

Record-level errors (bad JSON, bytes that are not UTF-8, missing or empty fields, unknown roles,
wrong role order, no final assistant turn) come from reading, see `formats.py`. The rules here
look at whole files and give warnings: the data can be trained on, but probably should not be
as it is. Rules register by name in `DATASET_RULES`; adding one is one function.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.artifacts import atomic_file, check_output
from slmforge.config.data import ReadOptions, ValidateConfig
from slmforge.data.formats import Example, read_with_findings
from slmforge.data.preference import (
    PreferenceExample,
    is_preference_file,
    pair_token_lengths,
    prompt_room_findings,
    read_preference_with_findings,
)
from slmforge.data.writing import write_examples
from slmforge.errors import ConfigError, DataError, Finding

_MAX_LINES_SHOWN = 10


Row = Example | PreferenceExample


@dataclass
class RuleContext:
    """What the dataset rules see: the valid examples (or pairs) of each file, in order."""

    examples: dict[str, list[Row]]
    max_seq_len: int
    min_examples: int
    tokenizer: Any | None = None
    pairs: bool = False  # the rows are preference pairs
    _keys: dict[str, list[str]] = field(default_factory=dict)

    def prompt_keys(self, file: str) -> list[str]:
        if file not in self._keys:
            self._keys[file] = [e.prompt_key() for e in self.examples[file]]
        return self._keys[file]


DatasetRule = Callable[[RuleContext], Iterable[Finding]]
DATASET_RULES: dict[str, DatasetRule] = {}


def dataset_rule(name: str) -> Callable[[DatasetRule], DatasetRule]:
    def decorator(fn: DatasetRule) -> DatasetRule:
        DATASET_RULES[name] = fn
        return fn

    return decorator


def _line_list(examples: Sequence[Example]) -> str:
    shown = ", ".join(str(e.line) for e in examples[:_MAX_LINES_SHOWN])
    hidden = len(examples) - _MAX_LINES_SHOWN
    return shown + (f" (+{hidden} more)" if hidden > 0 else "")


def _warning(example: Example, field_name: str | None, message: str, rule: str) -> Finding:
    return Finding(example.source, example.line, field_name, message, "warning", rule)


def _repeats(keys: Iterable[Any], examples: list[Example]) -> list[list[Example]]:
    """Groups of examples sharing a key, in order of first appearance."""
    grouped: dict[Any, list[Example]] = defaultdict(list)
    for key, example in zip(keys, examples, strict=True):
        grouped[key].append(example)
    return [group for group in grouped.values() if len(group) > 1]


def _exact(example: Row) -> str:
    """The whole example or pair (tool calls and definitions included, call ids left out: they
    may be assigned per line) as one comparable string."""
    if isinstance(example, PreferenceExample):
        parts = (example.prompt, example.chosen, example.rejected)
    else:
        parts = (example.messages,)
    messages = [
        [
            {
                "role": m["role"],
                "content": m["content"],
                "calls": [c["function"] for c in m.get("tool_calls") or []],
            }
            for m in part
        ]
        for part in parts
    ]
    return json.dumps([messages, example.tools], sort_keys=True, ensure_ascii=False)


@dataset_rule("identical_pair")
def identical_pairs(ctx: RuleContext) -> Iterable[Finding]:
    """The same example more than once: it weighs double in training."""
    for examples in ctx.examples.values():
        for group in _repeats(map(_exact, examples), examples):
            yield _warning(
                group[0], None, f"identical examples on lines {_line_list(group)}", "identical_pair"
            )


@dataset_rule("repeated_prompt")
def repeated_prompts(ctx: RuleContext) -> Iterable[Finding]:
    """The same prompt with different answers: the model is taught two things at once. (Not
    for pairs: several pairs per prompt is how preference data is made.)"""
    if ctx.pairs:
        return
    for file, examples in ctx.examples.items():
        for group in _repeats(ctx.prompt_keys(file), examples):
            if len({_exact(e) for e in group}) > 1:
                yield _warning(
                    group[0],
                    "prompt",
                    f"the same prompt with different answers on lines {_line_list(group)}",
                    "repeated_prompt",
                )


@dataset_rule("too_long")
def too_long(ctx: RuleContext) -> Iterable[Finding]:
    """Examples the trainer would truncate, cutting off (part of) the answer."""
    if ctx.tokenizer is None:
        return
    if ctx.pairs:
        yield from _pairs_too_long(ctx)
        return
    from slmforge.data.stats import token_lengths

    for examples in ctx.examples.values():
        for example, length in zip(examples, token_lengths(examples, ctx.tokenizer), strict=True):
            if length > ctx.max_seq_len:
                yield _warning(
                    example,
                    None,
                    f"{length} tokens, longer than --max-seq-len "
                    f"{ctx.max_seq_len} (training would truncate it)",
                    "too_long",
                )


def _pairs_too_long(ctx: RuleContext) -> Iterable[Finding]:
    """Pairs whose prompt leaves no room for an answer (an error: nothing to compare), and
    sides the trainer would truncate (a warning)."""
    for rows in ctx.examples.values():
        pairs = [r for r in rows if isinstance(r, PreferenceExample)]
        yield from prompt_room_findings(pairs, ctx.tokenizer, ctx.max_seq_len)
        for pair, tokens in zip(pairs, pair_token_lengths(pairs, ctx.tokenizer), strict=True):
            longest = max(tokens.chosen, tokens.rejected)
            if tokens.prompt < ctx.max_seq_len < longest:
                side = "chosen" if tokens.chosen >= tokens.rejected else "rejected"
                yield _warning(
                    pair,
                    pair.answer_field(side),
                    f"prompt + {side} is {longest} tokens, longer than --max-seq-len "
                    f"{ctx.max_seq_len} (training would truncate the answer)",
                    "too_long",
                )


@dataset_rule("few_examples")
def few_examples(ctx: RuleContext) -> Iterable[Finding]:
    for file, examples in ctx.examples.items():
        if 0 < len(examples) < ctx.min_examples:
            noun = "pairs" if ctx.pairs else "examples"
            yield Finding(
                file,
                None,
                None,
                f"only {len(examples)} {noun} (fewer than --min-examples {ctx.min_examples})",
                "warning",
                "few_examples",
            )


@dataset_rule("split_overlap")
def split_overlap(ctx: RuleContext) -> Iterable[Finding]:
    """A validation prompt that is also in training makes validation scores meaningless."""
    files = list(ctx.examples)
    for index, file in enumerate(files[1:], start=1):
        earlier: dict[str, Example] = {}
        for previous in files[:index]:
            for key, example in zip(ctx.prompt_keys(previous), ctx.examples[previous], strict=True):
                earlier.setdefault(key, example)
        for key, example in zip(ctx.prompt_keys(file), ctx.examples[file], strict=True):
            if (seen := earlier.get(key)) is not None:
                yield _warning(
                    example,
                    "prompt",
                    f"prompt also in {seen.source} line {seen.line} (overlap between files)",
                    "split_overlap",
                )


@dataclass
class ValidationReport:
    """All findings of a validation, and how many valid examples each file holds."""

    findings: list[Finding]
    examples: dict[str, int]
    dropped_lines: list[int] = field(default_factory=list)
    noun: str = "examples"  # what the files hold: examples or pairs

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, dict[str, int]]:
        """Per file: valid examples, errors and warnings."""
        table = {
            file: {"examples": n, "errors": 0, "warnings": 0} for file, n in self.examples.items()
        }
        for finding in self.findings:
            row = table.setdefault(finding.file, {"examples": 0, "errors": 0, "warnings": 0})
            row["errors" if finding.severity == "error" else "warnings"] += 1
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.counts(),
            "dropped_lines": self.dropped_lines,
            "findings": [f.to_dict() for f in self.findings],
        }


def validate_files(
    files: Sequence[str | Path],
    options: ReadOptions | None = None,
    *,
    tokenizer: Any | None = None,
    max_seq_len: int = 2048,
    min_examples: int = 10,
) -> tuple[ValidationReport, dict[str, list[Example]]]:
    """Read and check `files` (train first); `tokenizer` is a loaded tokenizer or a name.
    The files are read as preference pairs when the first one holds pairs.

    Returns the report and the valid examples (or pairs) of each file."""
    if isinstance(tokenizer, str):
        from slmforge.data.stats import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    pairs = bool(files) and Path(files[0]).exists() and is_preference_file(files[0], options)
    read = read_preference_with_findings if pairs else read_with_findings
    findings: list[Finding] = []
    examples: dict[str, list[Row]] = {}
    for path in files:
        valid, problems = read(path, options)
        examples[str(path)] = list(valid)
        findings.extend(problems)
    ctx = RuleContext(examples, max_seq_len, min_examples, tokenizer, pairs)
    for rule in DATASET_RULES.values():
        findings.extend(rule(ctx))
    order = {file: i for i, file in enumerate(examples)}
    findings.sort(key=lambda f: (order.get(f.file, len(order)), f.line or 0))
    counts = {k: len(v) for k, v in examples.items()}
    return ValidationReport(findings, counts, noun="pairs" if pairs else "examples"), examples


def _check_outputs(config: ValidateConfig) -> None:
    """Impossible combinations and existing outputs fail before any file is read."""
    if config.drop_invalid and config.out is None:
        raise ConfigError("--drop-invalid needs --out FILE for the clean copy")
    if config.out is not None and not config.drop_invalid:
        raise ConfigError("--out is only used with --drop-invalid")
    if config.drop_invalid and len(config.files) != 1:
        raise ConfigError("--drop-invalid works on one file at a time")
    for output in (config.report, config.out):
        if output is not None:
            check_output(output, config.force)


def write_report(report: ValidationReport, path: Path, force: bool) -> Path:
    with atomic_file(path, force=force) as temp:
        temp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def run_validate(config: ValidateConfig) -> ValidationReport:
    """`slmforge data validate`: check, write the report, and the clean copy if asked.

    With errors and no --drop-invalid, only the report is written and DataError is left to the
    caller (it renders every finding first). With --drop-invalid the invalid records are left
    out of the copy and listed in `report.dropped_lines`."""
    _check_outputs(config)
    read = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    report, examples = validate_files(
        config.files,
        read,
        tokenizer=config.tokenizer,
        max_seq_len=config.max_seq_len,
        min_examples=config.min_examples,
    )
    if config.report is not None:
        write_report(report, config.report, config.force)
    if config.drop_invalid and config.out is not None:
        report.dropped_lines = sorted({f.line for f in report.errors if f.line is not None})
        dropped = set(report.dropped_lines)
        valid = [e for e in examples[str(config.files[0])] if e.line not in dropped]
        if not valid:
            raise DataError(report.errors, summary=f"{config.files[0]}: no valid examples to keep")
        _write_clean_copy(valid, config.out, config)
    return report


def _write_clean_copy(valid: list[Row], out: Path, config: ValidateConfig) -> None:
    pairs = [r for r in valid if isinstance(r, PreferenceExample)]
    if not pairs:
        examples = [r for r in valid if isinstance(r, Example)]
        write_examples(examples, out, config.output_format, force=config.force)
        return
    from slmforge.data.preference_write import pair_output_format, write_pairs

    explicit = "output_format" in config.model_fields_set
    fmt = pair_output_format(config.output_format, explicit)
    write_pairs(pairs, out, fmt, force=config.force)
