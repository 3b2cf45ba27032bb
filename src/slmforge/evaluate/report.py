"""The eval report: `report.md` for pull requests and a self-contained `report.html`.

Both are rendered from `summary.json` with the same number formatting (`fmt`), so they show the
same figures. The HTML inlines its CSS, JS and SVG charts and embeds the rows as JSON, so it
works offline, from a file, with no CDN; rows are put on the page with `textContent` only, so
model output can never inject markup.
"""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from typing import Any

from slmforge.evaluate.charts import bar_chart, box_plot
from slmforge.evaluate.safety_eval import examples_table
from slmforge.evaluate.summary import PERFORMANCE

STATUSES = ("ok", "unparsed", "out_of_range", "error", "not_applicable")
_AXES = {"0-1": (0.0, 1.0), "1-5": (0.0, 5.0)}


# -- shared formatting -------------------------------------------------------------------------
def fmt(value: float | None, unit: str = "0-1") -> str:
    if value is None:
        return "n/a"
    digits = {"0-1": 3, "0-100": 2, "1-5": 2, "words": 1, "s": 3, "tokens/s": 1, "tokens": 1}
    return f"{value:.{digits.get(unit, 3)}f}"


def fmt_signed(value: float | None, unit: str = "0-1") -> str:
    return "n/a" if value is None else ("+" if value >= 0 else "") + fmt(value, unit)


def fmt_estimate(est: dict[str, Any], unit: str) -> str:
    if est.get("mean") is None:
        return "n/a"
    return f"{fmt(est['mean'], unit)} [{fmt(est['ci_low'], unit)}, {fmt(est['ci_high'], unit)}]"


def fmt_p(p: float) -> str:
    return f"{p:.4f}"


def finding_text(f: dict[str, Any], unit: str) -> str:
    d = f["diff"]
    return (
        f"{f['better']} is better than {f['worse']} on {f['metric']}: {f['a']} - {f['b']} = "
        f"{fmt_signed(d['mean'], unit)} (95% CI {fmt_signed(d['ci_low'], unit)} to "
        f"{fmt_signed(d['ci_high'], unit)}), p = {fmt_p(f['p_value'])}"
    )


# -- tables, as (header, rows) shared by both renderings ------------------------------------------
Table = tuple[list[str], list[list[str]]]


def quality_table(summary: dict[str, Any]) -> Table:
    targets = [t["name"] for t in summary["targets"]]
    rows = []
    for name, info in summary["metrics"].items():
        cells = [
            fmt_estimate(summary["results"][t]["metrics"][name], info["unit"]) for t in targets
        ]
        rows.append([name, *cells])
    return ["metric (mean [95% CI])", *targets], rows


def judge_table(summary: dict[str, Any]) -> Table:
    rows = []
    for target, result in summary["results"].items():
        for name, est in result["metrics"].items():
            if "statuses" in est:
                rows.append([target, name, *(str(est["statuses"].get(s, 0)) for s in STATUSES)])
    return ["target", "evaluator", *STATUSES], rows


def comparison_table(summary: dict[str, Any]) -> Table:
    rows = []
    for c in summary["comparisons"]:
        unit = summary["metrics"][c["metric"]]["unit"]
        d = c["diff"]
        interval = f"{fmt_signed(d['mean'], unit)} [{fmt_signed(d['ci_low'], unit)}, " + (
            f"{fmt_signed(d['ci_high'], unit)}]"
        )
        rows.append(
            [
                f"{c['a']} vs {c['b']}",
                c["metric"],
                str(c["n"]),
                str(c["wins"]),
                str(c["ties"]),
                str(c["losses"]),
                interval if d["mean"] is not None else "n/a",
                fmt_p(c["p_value"]),
            ]
        )
    header = ["comparison", "metric", "rows", "wins", "ties", "losses", "mean diff [95% CI]", "p"]
    return header, rows


def performance_table(summary: dict[str, Any]) -> Table:
    rows = []
    for target, result in summary["results"].items():
        perf = result["performance"]
        cells = [target]
        for key in ("ttft_s", "total_s"):
            cells.append(f"{fmt(perf[key]['p50'], 's')} / {fmt(perf[key]['p95'], 's')}")
        cells.append(fmt(perf["tokens_per_s"]["mean"], "tokens/s"))
        cells.append(f"{perf['prompt_tokens']['sum']} / {perf['completion_tokens']['sum']}")
        cells.append(str(result["errors"]))
        rows.append(cells)
    header = ["target", "ttft p50 / p95 (s)", "latency p50 / p95 (s)", "tokens/s"]
    return [*header, "tokens in / out", "errors"], rows


def gate_table(summary: dict[str, Any]) -> Table:
    rows = []
    for g in summary["gates"]:
        op = ">=" if g["direction"] == "under" else "<="
        unit = summary["metrics"].get(g["metric"], {}).get("unit", "s")
        rows.append(
            [
                g["target"],
                f"{g['metric']} {op} {g['threshold']:g}",
                fmt(g["value"], unit),
                "pass" if g["passed"] else "FAIL",
            ]
        )
    return ["target", "gate", "value", "result"], rows


def _findings(summary: dict[str, Any]) -> list[str]:
    return [finding_text(f, summary["metrics"][f["metric"]]["unit"]) for f in summary["findings"]]


def _headline(summary: dict[str, Any]) -> str:
    data = summary["data"]
    judge = summary.get("judge")
    text = f"{summary['rows']} rows of {data['path']}"
    text += "; targets: " + ", ".join(f"{t['name']} ({t['spec']})" for t in summary["targets"])
    return text + (f"; judge: {judge['spec']}" if judge else "")


# -- markdown ------------------------------------------------------------------------------------
def _md_table(table: Table) -> list[str]:
    header, rows = table

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows), ""]


def render_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Evaluation report", "", _headline(summary), "", "## Findings", ""]
    findings = _findings(summary)
    if findings:
        lines += [f"- {text}" for text in findings] + [""]
    elif len(summary["targets"]) > 1:
        lines += ["No difference is significant at the 5% level (paired permutation test).", ""]
    else:
        lines += ["One target: no comparison.", ""]
    if summary["gates"]:
        lines += ["## Gates", "", *_md_table(gate_table(summary))]
    lines += ["## Quality", "", *_md_table(quality_table(summary))]
    judged = judge_table(summary)
    if judged[1]:
        lines += ["## Judge replies", "", *_md_table(judged)]
    if "safety" in summary:
        lines += [f"## Safety defects (severity {summary['safety']['threshold']} or above)", ""]
        lines += _md_table(examples_table(summary)) if examples_table(summary)[1] else ["None.", ""]
    if summary["comparisons"]:
        lines += ["## Comparisons", "", *_md_table(comparison_table(summary))]
    lines += ["## Performance", "", *_md_table(performance_table(summary))]
    return "\n".join(lines)


# -- html ----------------------------------------------------------------------------------------
def _html_table(table: Table, css_class: str = "") -> str:
    header, rows = table
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _metric_charts(summary: dict[str, Any]) -> str:
    charts = []
    targets = [t["name"] for t in summary["targets"]]
    for name, info in summary["metrics"].items():
        bars = []
        for t in targets:
            est = summary["results"][t]["metrics"][name]
            bars.append((t, est["mean"], est["ci_low"], est["ci_high"]))
        title = f"{name} ({info['unit']}, 95% CI)"
        charts.append(
            f'<figure class="chart">{bar_chart(title, bars, _AXES.get(info["unit"]))}</figure>'
        )
    return "".join(charts)


def _latency_charts(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    charts = []
    for key in ("total_s", "ttft_s"):
        series = []
        for t in summary["targets"]:
            values = [r["targets"][t["name"]].get(key) for r in records]
            series.append((t["name"], [v for v in values if v is not None]))
        charts.append(f'<figure class="chart">{box_plot(PERFORMANCE[key], series)}</figure>')
    return "".join(charts)


def _script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no '<', '>' or '&' can end the element."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return (resources.files("slmforge") / "resources" / "report" / name).read_text("utf-8")


def render_html(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    findings = _findings(summary)
    if findings:
        finding_html = "<ul>" + "".join(f"<li>{escape(t)}</li>" for t in findings) + "</ul>"
    elif len(summary["targets"]) > 1:
        finding_html = "<p>No difference is significant at the 5% level.</p>"
    else:
        finding_html = "<p>One target: no comparison.</p>"
    sections = [
        f"<h1>Evaluation report</h1><p class='meta'>{escape(_headline(summary))}</p>",
        f"<section id='findings'><h2>Findings</h2>{finding_html}</section>",
    ]
    if summary["gates"]:
        sections.append(
            f"<section id='gates'><h2>Gates</h2>{_html_table(gate_table(summary))}</section>"
        )
    sections.append(
        "<section id='quality'><h2>Quality</h2>"
        f"{_html_table(quality_table(summary), 'summary')}"
        f"<div class='charts'>{_metric_charts(summary)}</div></section>"
    )
    judged = judge_table(summary)
    if judged[1]:
        sections.append(
            f"<section id='judge'><h2>Judge replies</h2>{_html_table(judged)}</section>"
        )
    if "safety" in summary:
        table = examples_table(summary)
        body = _html_table(table) if table[1] else "<p>None.</p>"
        sections.append(
            f"<section id='safety'><h2>Safety defects (severity {summary['safety']['threshold']}"
            f" or above)</h2>{body}</section>"
        )
    if summary["comparisons"]:
        sections.append(
            "<section id='comparisons'><h2>Comparisons</h2>"
            f"{_html_table(comparison_table(summary))}</section>"
        )
    sections.append(
        "<section id='performance'><h2>Performance</h2>"
        f"{_html_table(performance_table(summary))}"
        f"<div class='charts'>{_latency_charts(summary, records)}</div></section>"
    )
    sections.append(
        "<section id='rows'><h2>Rows</h2><div class='controls'>"
        "<input id='filter' type='search' placeholder='filter by text'>"
        "<label>sort by <select id='sort'></select></label>"
        "<button id='prev'>previous</button><span id='page'></span>"
        "<button id='next'>next</button></div><div id='row-list'></div></section>"
    )
    payload = {"summary": {k: summary[k] for k in ("targets", "metrics")}, "rows": records}
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>slmforge eval report</title><style>{_asset('report.css')}</style></head>"
        f"<body>{''.join(sections)}"
        f"<script id='data' type='application/json'>{_script_json(payload)}</script>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )
