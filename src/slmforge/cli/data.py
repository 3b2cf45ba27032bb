"""`slmforge data convert|validate|split|stats|sample` (`synth` and `augment` have their own
modules: cli/data_synth.py, cli/data_augment.py).

Each command validates its options through the config model, calls the library, and renders the
result with rich on stdout. Heavy packages (pandas, pyarrow, transformers, datasets) are imported
by the library only when a command needs them, so `slmforge --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from slmforge.cli.options import model_command
from slmforge.config.data import (
    ConvertConfig,
    SampleConfig,
    SplitConfig,
    StatsConfig,
    ValidateConfig,
)
from slmforge.errors import DataError

data_app = typer.Typer(
    help="Read, check, convert, split and describe fine-tuning data.", no_args_is_help=True
)


def _console() -> Any:
    from rich.console import Console

    # soft_wrap: a finding is one line a user can grep, even on a narrow terminal.
    return Console(soft_wrap=True, highlight=False)


@model_command(data_app, "convert", ConvertConfig, arguments=("input",))
def convert(config: ConvertConfig) -> None:
    """Convert any supported data file to messages, prompt/response or templated text jsonl;
    a preference file to openai_dpo, trl or trl_text."""
    from slmforge.data.preference import is_preference_file
    from slmforge.data.writing import run_convert

    path, count = run_convert(config)
    what = "pairs" if is_preference_file(path) else "examples"
    _console().print(f"wrote {count} {what} to {path}", markup=False)


def _render_findings(report: Any) -> None:
    from rich.text import Text

    console = _console()
    for finding in report.findings:
        style = "red" if finding.severity == "error" else "yellow"
        line = Text(f"{finding.location()}: ")
        line.append(f"{finding.severity}: ", style=style)
        line.append(finding.message)
        console.print(line)


def _render_counts(report: Any) -> None:
    from rich.table import Table

    table = Table(title="validation")
    for column in ("file", report.noun, "errors", "warnings"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for file, row in report.counts().items():
        table.add_row(file, str(row["examples"]), str(row["errors"]), str(row["warnings"]))
    _console().print(table)


@model_command(data_app, "validate", ValidateConfig, arguments=("files",))
def validate(config: ValidateConfig) -> None:
    """Check data files (train first): every problem with file, line and field; exit 2 on errors."""
    from slmforge.data.validate import run_validate

    report = run_validate(config)
    _render_findings(report)
    _render_counts(report)
    console = _console()
    if config.report is not None:
        console.print(f"report: {config.report}", markup=False)
    if report.errors and not config.drop_invalid:
        files = ", ".join(map(str, config.files))
        raise DataError(
            report.findings,
            summary=f"{len(report.errors)} errors in {files}; fix "
            "them, or pass --drop-invalid --out FILE to keep only the valid examples",
        )
    if config.drop_invalid:
        lines = ", ".join(map(str, report.dropped_lines)) or "none"
        kept = sum(report.examples.values())
        console.print(
            f"dropped {len(report.dropped_lines)} invalid records (lines: {lines}); "
            f"wrote {kept} {report.noun} to {config.out}",
            markup=False,
        )
    else:
        console.print(f"ok: {sum(report.examples.values())} valid {report.noun}", markup=False)


@model_command(data_app, "split", SplitConfig, arguments=("input",))
def split(config: SplitConfig) -> None:
    """Split into train/validation/test jsonl; repeated prompts stay in one part (pairs too:
    pairs that share a prompt are never split between parts)."""
    from rich.table import Table

    from slmforge.data.split import run_split

    written = run_split(config)
    table = Table(title=f"split: {config.out_dir}")
    table.add_column("part")
    table.add_column("rows", justify="right")
    table.add_column("file")
    for name, path in written.items():
        count = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        table.add_row(name, str(count), str(path))
    _console().print(table)


def _stats_table(stats: Any) -> Any:
    from rich.table import Table

    table = Table(title="stats", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("examples", str(stats.examples))
    for label, summary in (("turns", stats.turns), ("characters", stats.characters)):
        table.add_row(f"{label} min/mean/max", f"{summary.min}/{summary.mean}/{summary.max}")
    table.add_row("with system message", str(stats.system_messages))
    table.add_row("repeated prompts", str(stats.repeated_prompts))
    if stats.tool_examples:
        table.add_row("with tools", str(stats.tool_examples))
        called = ", ".join(f"{name} {n}" for name, n in stats.functions_called.items())
        table.add_row("tool calls", f"{stats.tool_calls} ({called})" if called else "0")
    if stats.tokens is not None:
        for name, value in stats.tokens.percentiles.items():
            table.add_row(f"tokens {name}", str(value))
        table.add_row("tokens max", str(stats.tokens.max))
    return table


def _histogram_table(buckets: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title="token lengths", show_header=True)
    table.add_column("tokens", justify="right")
    table.add_column("examples", justify="right")
    table.add_column("")
    peak = max(b.count for b in buckets) or 1
    for bucket in buckets:
        bar = "█" * round(30 * bucket.count / peak)
        table.add_row(f"{bucket.low}-{bucket.high}", str(bucket.count), bar)
    return table


def _pair_stats_table(stats: Any) -> Any:
    from rich.table import Table

    table = Table(title="stats (preference pairs)", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("pairs", str(stats.pairs))
    turns = stats.prompt_turns
    table.add_row("prompt turns min/mean/max", f"{turns.min}/{turns.mean}/{turns.max}")
    for part, summary in stats.characters.items():
        table.add_row(
            f"{part} characters min/mean/max", f"{summary.min}/{summary.mean}/{summary.max}"
        )
    table.add_row("with system message", str(stats.system_messages))
    share = f"{100 * stats.repeated_prompt_share:.1f}%"
    table.add_row("repeated prompts", f"{stats.repeated_prompts} ({share})")
    unit = "tokens" if stats.tokens else "characters"
    table.add_row(f"chosen/rejected length ({unit})", f"{stats.chosen_rejected_ratio}x")
    if stats.tool_pairs:
        table.add_row("with tools", str(stats.tool_pairs))
    for part, tokens in (stats.tokens or {}).items():
        p50, p95 = tokens.percentiles["p50"], tokens.percentiles["p95"]
        table.add_row(f"{part} tokens p50/p95/max", f"{p50}/{p95}/{tokens.max}")
    return table


@model_command(data_app, "stats", StatsConfig, arguments=("input",))
def stats(config: StatsConfig) -> None:
    """Describe a data file: counts, turns, characters and (with --tokenizer) token lengths;
    for preference pairs each part's lengths and the chosen/rejected length ratio."""
    from slmforge.config.data import ReadOptions
    from slmforge.data.formats import read_examples
    from slmforge.data.preference import is_preference_file, read_preference_examples
    from slmforge.data.stats import compute_pair_stats, compute_stats, load_tokenizer

    options = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    pairs = config.input.exists() and is_preference_file(config.input, options)
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer else None
    if pairs:
        result = compute_pair_stats(read_preference_examples(config.input, options), tokenizer)
    else:
        result = compute_stats(read_examples(config.input, options), tokenizer)
    if config.json_output:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console = _console()
    console.print(_pair_stats_table(result) if pairs else _stats_table(result))
    tokens = result.tokens["longest_side"] if pairs and result.tokens else result.tokens
    if tokens is not None:
        console.print(_histogram_table(tokens.histogram))


@model_command(data_app, "sample", SampleConfig)
def sample(config: SampleConfig) -> None:
    """Write a sample data set: travel-assistant pairs, function-calling rows (--kind tools)
    or preference pairs (--kind preference)."""
    from slmforge.data.sample import write_sample

    path = write_sample(config.out, config.force, config.kind, config.count, config.seed)
    with path.open(encoding="utf-8") as handle:
        count = sum(1 for line in handle if line.strip())
    what = "pairs" if config.kind == "preference" else "examples"
    _console().print(f"wrote {count} {what} to {path}", markup=False)


def register(app: typer.Typer) -> None:
    from slmforge.cli import data_augment, data_synth

    data_synth.register(data_app)
    data_augment.register(data_app)
    app.add_typer(data_app, name="data")
