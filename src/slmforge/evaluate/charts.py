"""Small inline SVG charts for the HTML report: bars with confidence intervals, box plots.

Hand-written SVG rather than a plotting library: the report stays one self-contained file that
renders offline, the charts are a few kilobytes each, and nothing heavy is imported to write it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

PALETTE = ("#3b6fb6", "#e07b39", "#3a9a5b", "#b8475a", "#7a5bb5", "#8c7a3e")
WIDTH = 420
LABEL_W = 110
ROW_H = 26
TOP = 28
BOTTOM = 26


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is at least `value` (axis ends)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value * (1 - 1e-9))


def _axis(x0: float, x1: float, lo: float, hi: float, y: float) -> list[str]:
    parts = [f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#999"/>']
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        x = x0 + (x1 - x0) * k / 4
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{y + 16}" font-size="10" text-anchor="middle" '
            f'fill="#555">{value:g}</text>'
        )
    return parts


def _frame(title: str, height: float, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(title)}">'
        f'<text x="4" y="16" font-size="12" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float | None, float | None, float | None]],
    axis: tuple[float, float] | None = None,
) -> str:
    """One horizontal bar per (label, mean, ci_low, ci_high), the interval as a whisker."""
    values = [v for _, mean, _, high in bars for v in (mean, high) if v is not None]
    lo, hi = axis or (0.0, nice_max(max(values, default=1.0)))
    x0, x1 = LABEL_W, WIDTH - 16
    scale = (x1 - x0) / (hi - lo)
    body = []
    for k, (label, mean, low, high) in enumerate(bars):
        y = TOP + k * ROW_H
        body.append(
            f'<text x="{x0 - 6}" y="{y + 15}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        if mean is None:
            body.append(f'<text x="{x0 + 4}" y="{y + 15}" font-size="11" fill="#777">n/a</text>')
            continue
        width = max((min(mean, hi) - lo) * scale, 0)
        color = PALETTE[k % len(PALETTE)]
        body.append(
            f'<rect x="{x0}" y="{y + 4}" width="{width:.1f}" height="{ROW_H - 10}" '
            f'fill="{color}" opacity="0.85"><title>{escape(label)}: {mean:.4g}</title></rect>'
        )
        if low is not None and high is not None:
            a, b = x0 + (low - lo) * scale, x0 + (min(high, hi) - lo) * scale
            mid = y + ROW_H / 2 - 1
            body.append(
                f'<path d="M{a:.1f},{mid - 5}v10M{a:.1f},{mid}H{b:.1f}M{b:.1f},{mid - 5}v10" '
                'stroke="#222" fill="none" stroke-width="1.3"/>'
            )
    axis_y = TOP + len(bars) * ROW_H + 2
    body += _axis(x0, x1, lo, hi, axis_y)
    return _frame(title, axis_y + BOTTOM, body)


def box_plot(title: str, series: Sequence[tuple[str, Sequence[float]]]) -> str:
    """One box per (label, values): whiskers min..p95, box p25..p75, median line, max dot."""
    finite = [v for _, values in series for v in values]
    lo, hi = 0.0, nice_max(max(finite, default=1.0))
    x0, x1 = LABEL_W, WIDTH - 16
    scale = (x1 - x0) / (hi - lo)
    body = []
    for k, (label, values) in enumerate(series):
        y = TOP + k * ROW_H
        mid = y + ROW_H / 2
        body.append(
            f'<text x="{x0 - 6}" y="{y + 15}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        if not values:
            body.append(f'<text x="{x0 + 4}" y="{y + 15}" font-size="11" fill="#777">n/a</text>')
            continue
        p = np.percentile(np.asarray(values, dtype=float), [0, 25, 50, 75, 95, 100])
        xs = [x0 + (v - lo) * scale for v in p]
        color = PALETTE[k % len(PALETTE)]
        tip = f"{label}: median {p[2]:.3g}, p95 {p[4]:.3g}, max {p[5]:.3g}"
        body.append(
            f"<g><title>{escape(tip)}</title>"
            f'<path d="M{xs[0]:.1f},{mid}H{xs[1]:.1f}M{xs[3]:.1f},{mid}H{xs[4]:.1f}" '
            'stroke="#444"/>'
            f'<rect x="{xs[1]:.1f}" y="{mid - 7}" width="{max(xs[3] - xs[1], 1):.1f}" '
            f'height="14" fill="{color}" opacity="0.8"/>'
            f'<path d="M{xs[2]:.1f},{mid - 7}v14" stroke="#111" stroke-width="2"/>'
            f'<circle cx="{xs[5]:.1f}" cy="{mid}" r="2.5" fill="#444"/></g>'
        )
    axis_y = TOP + len(series) * ROW_H + 2
    body += _axis(x0, x1, lo, hi, axis_y)
    return _frame(title, axis_y + BOTTOM, body)
