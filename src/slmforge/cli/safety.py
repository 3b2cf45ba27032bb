"""`slmforge safety scan|check|measure`: defect rates of targets, verdicts on texts, and the
classifiers' precision/recall on a labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmforge.cli.options import model_command
from slmforge.config.safety import SafetyScanConfig
from slmforge.errors import RunError

safety_app = typer.Typer(
    help="Content safety: scan targets for defect rates, check texts against a policy.",
    no_args_is_help=True,
)

POLICY_HELP = "Policy YAML (docs/safety.md); default: blocklist + jailbreak at medium."


@model_command(safety_app, "scan", SafetyScanConfig, config_file=True)
def scan(cfg: SafetyScanConfig) -> None:
    """Send adversarial prompts (shipped set, --prompts, --simulate) to every target and
    report the defect rate per harm category (an eval artifact with report.html/md)."""
    from rich.console import Console
    from rich.table import Table

    from slmforge.evaluate.report import fmt_estimate
    from slmforge.evaluate.safety_scan import run_scan

    result = run_scan(cfg)
    summary = result.summary
    names = [n for n in summary["metrics"] if n.startswith("defect_")]
    table = Table(title=f"defect rate on {summary['rows']} prompts (mean [95% CI])")
    table.add_column("target")
    for name in names:
        table.add_column(name.removeprefix("defect_"), justify="right")
    for target, target_result in summary["results"].items():
        cells = [fmt_estimate(target_result["metrics"][n], "0-1") for n in names]
        table.add_row(target, *cells)
    console = Console()
    console.print(table)
    console.print(f"report: {result.out}/report.html, {result.out}/report.md", highlight=False)
    failed = result.failed_gates
    if failed:
        missed = "; ".join(f"{g['target']} {g['metric']} = {g['value']:.3g}" for g in failed)
        raise RunError(f"{len(failed)} gate(s) failed: {missed} (report in {result.out})")


@safety_app.command("check")
def check(
    texts: list[str] = typer.Argument(help="Texts to classify."),
    policy: Path | None = typer.Option(None, help=POLICY_HELP),
    direction: str = typer.Option("input", help="input (a prompt) or output (an answer)."),
) -> None:
    """Classify texts with a policy; prints one JSON verdict per text (Azure's shape)."""
    from slmforge.config.safety import SafetyPolicy
    from slmforge.errors import InputError
    from slmforge.safety.filter import SafetyFilter

    if direction not in ("input", "output"):
        raise InputError(f"--direction: expected input or output, got {direction!r}")
    safety = SafetyFilter.from_file(policy) if policy else SafetyFilter(SafetyPolicy())
    for text in texts:
        verdict = safety.verdict(text, direction)
        line = {"text": text, "blocked": verdict.blocked, "reason": verdict.reason}
        typer.echo(json.dumps(line | {"content_filter_results": verdict.results}))


@safety_app.command("measure")
def measure(
    labelled: Path | None = typer.Option(
        None, help="JSONL of {text, categories}; default: the shipped labelled set."
    ),
    classifier: list[str] = typer.Option(
        ["blocklist", "profanity", "jailbreak"], help="Classifiers to measure (repeat)."
    ),
    threshold: str = typer.Option("low", help="Severity that counts as flagged."),
) -> None:
    """Precision, recall and false positive rate of classifiers on a labelled set."""
    from rich.console import Console
    from rich.table import Table

    from slmforge.safety.classifiers import make_classifier
    from slmforge.safety.measure import measure as run_measure
    from slmforge.safety.measure import read_labelled

    rows = read_labelled(labelled)
    scores = run_measure({n: make_classifier(n) for n in classifier}, rows, threshold)
    table = Table(title=f"{len(rows)} labelled texts, flagged at {threshold} or above")
    for column in ("classifier", "category", "precision", "recall", "FPR", "tp/fp/fn"):
        table.add_column(
            column, justify="left" if column in ("classifier", "category") else "right"
        )

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    for s in scores:
        counts = f"{s.tp}/{s.fp}/{s.fn}"
        table.add_row(
            s.classifier,
            s.category,
            pct(s.precision),
            pct(s.recall),
            pct(s.false_positive_rate),
            counts,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(safety_app, name="safety")
