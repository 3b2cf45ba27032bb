"""`compare.md` of `slmforge app compare`: speed per side, agreement, and the answers side by
side. Numbers use the eval report's formatting (`evaluate/report.py:fmt`), so both reports
show the same figures the same way; the per-metric report of each side is eval/report.html."""

from __future__ import annotations

from typing import Any

from slmforge.evaluate.report import fmt, fmt_estimate

SIDES = ("local", "cloud")
SPEED_ROWS = {"ttft_s": ("time to first token", "s"), "tokens_per_s": ("decode rate", "tokens/s")}
STATS = ("mean", "p50", "p95")


def cell(text: str | None) -> str:
    """Text safe inside a Markdown table cell."""
    if text is None:
        return ""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip()


def speed_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| figure | local | cloud | local / cloud |", "|---|---:|---:|---:|"]
    for key, (label, unit) in SPEED_ROWS.items():
        figures = summary["speed"][key]
        for stat in STATS:
            ratio = figures["local_over_cloud"][stat]
            lines.append(
                f"| {label} {stat} ({unit}) | {fmt(figures['local'][stat], unit)} | "
                f"{fmt(figures['cloud'][stat], unit)} | "
                f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |"
            )
    return lines


def agreement(summary: dict[str, Any]) -> list[str]:
    similarity = summary["similarity"]
    lines = [
        f"- similarity ({similarity['metric']}, mean [95% CI] over {similarity['n']} pairs): "
        f"{fmt_estimate(similarity, '0-1')}"
    ]
    preference = summary["preference"]
    if preference is not None:
        lines.append(
            f"- the judge ({preference['judge']}) prefers local {preference['local']}, cloud "
            f"{preference['cloud']}, tie {preference['tie']}; unjudged {preference['unjudged']}"
        )
    return lines


def _answer(side: dict[str, Any]) -> str:
    if side["error"] is not None:
        return f"**error:** {cell(side['error'])}"
    return cell(side["text"])


def _preference(record: dict[str, Any]) -> str:
    preference = record.get("preference")
    if preference is None:
        return ""
    if preference["preferred"] is None:
        return cell(f"no verdict: {preference['reason']}")
    return f"**{preference['preferred']}**: {cell(preference['reason'])}"


def answers_table(records: list[dict[str, Any]], judged: bool) -> list[str]:
    header = "| # | question | local | cloud | similarity |" + (" judge |" if judged else "")
    lines = [header, "|---" * (5 + judged) + "|"]
    for record in records:
        row = (
            f"| {record['row'] + 1} | {cell(record['question'])} | {_answer(record['local'])} | "
            f"{_answer(record['cloud'])} | {fmt(record['similarity'])} |"
        )
        lines.append(row + (f" {_preference(record)} |" if judged else ""))
    return lines


def render_markdown(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    sides = summary["sides"]
    parts = [
        f"# local vs cloud on {summary['rows']} prompts",
        "",
        *(
            f"- {side}: `{sides[side]['spec']}` ({sides[side]['answered']} answered, "
            f"{sides[side]['errors']} errors)"
            for side in SIDES
        ),
        "",
        "## speed",
        "",
        *speed_table(summary),
        "",
        "## agreement",
        "",
        *agreement(summary),
        "",
        "## answers",
        "",
        *answers_table(records, summary["preference"] is not None),
        "",
        f"Each side's metrics, intervals and tests: {summary['eval'].replace('summary.json', '')}"
        "report.html",
        "",
    ]
    return "\n".join(parts)
