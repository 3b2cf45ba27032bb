"""`summary.json`: per-target means with 95% bootstrap intervals, performance, paired comparisons,
headline findings and the result of every gate (`--fail-under` / `--fail-over`)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge.config.evaluate import EvalConfig, Gate
from slmforge.errors import InputError, RunError
from slmforge.evaluate import stats

if TYPE_CHECKING:
    from slmforge.evaluate.dataset import EvalRow
    from slmforge.evaluate.judge import Judge, JudgePrompt
    from slmforge.evaluate.metrics import Metric
    from slmforge.evaluate.partial import Answer
    from slmforge.evaluate.runner import Target

PERFORMANCE = {
    "ttft_s": "time to first token (s)",
    "total_s": "total latency (s)",
    "tokens_per_s": "decode tokens/s",
    "prompt_tokens": "tokens in",
    "completion_tokens": "tokens out",
}
LOWER_IS_BETTER = {"ttft_s", "total_s"}
STAT_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<stat>p50|p90|p95|min|max)$")
SIGNIFICANCE = 0.05
_USERINFO = re.compile(r"//[^/@\s]+@")


def redact(spec: str) -> str:
    """A spec without any user:password@ part of a URL (never written to reports)."""
    return _USERINFO.sub("//", spec)


def check_gate_names(cfg: EvalConfig, metric_names: list[str]) -> None:
    """Every gate names a metric that this run computes, or a performance figure."""
    known = [*metric_names, *PERFORMANCE]
    for direction, gate in cfg.gates():
        match = STAT_SUFFIX.match(gate.metric)
        base = match.group("base") if match and match.group("base") in PERFORMANCE else gate.metric
        if base not in known:
            raise InputError(
                f"--fail-{direction} {gate.label()}: {gate.metric!r} is not computed in this run "
                f"(known: {', '.join(known)}; performance figures also take "
                "_p50/_p90/_p95/_min/_max)"
            )


def _metric_info(metrics: list[Metric], prompts: list[JudgePrompt]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for m in metrics:
        info[m.name] = {
            "kind": "reference" if m.needs_reference else "answer",
            "description": m.description,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
        }
    for p in prompts:
        info[p.name] = {
            "kind": "judge",
            "description": p.description,
            "unit": "1-5",
            "higher_is_better": True,
            "prompt_version": p.version,
        }
    return info


def _judge_scores(rows: list[dict[str, Any]], name: str) -> list[float | None]:
    return [(row.get(name) or {}).get("score") for row in rows]


def _performance(answers: list[Answer]) -> dict[str, Any]:
    done = [a for a in answers if a.error is None]
    perf = {key: stats.percentiles([getattr(a, key) for a in done]) for key in PERFORMANCE}
    for key in ("prompt_tokens", "completion_tokens"):
        perf[key]["sum"] = sum(getattr(a, key) for a in done)
    perf["finish_reasons"] = dict(Counter(a.finish_reason or "none" for a in done))
    return perf


def _columns(
    target: str,
    metric_names: list[str],
    scores: dict[str, dict[str, list[float | None]]],
    judgements: dict[str, list[dict[str, Any]]],
) -> dict[str, list[float | None]]:
    columns = dict(scores[target])
    for name in metric_names:
        if name not in columns:
            columns[name] = _judge_scores(judgements.get(target, []), name)
    return columns


def summarize(
    cfg: EvalConfig,
    rows: list[EvalRow],
    targets: list[Target],
    metrics: list[Metric],
    prompts: list[JudgePrompt],
    answers: dict[str, list[Answer]],
    scores: dict[str, dict[str, list[float | None]]],
    judgements: dict[str, list[dict[str, Any]]],
    judge: Judge | None,
) -> dict[str, Any]:
    info = _metric_info(metrics, prompts)
    names = list(info)
    columns = {t.name: _columns(t.name, names, scores, judgements) for t in targets}
    results: dict[str, Any] = {}
    for target in targets:
        per_metric = {}
        for name in names:
            values = [v for v in columns[target.name][name] if v is not None]
            estimate = stats.bootstrap_mean(values, cfg.bootstrap, cfg.seed).to_dict()
            if info[name]["kind"] == "judge":
                states = [(r.get(name) or {}).get("status") for r in judgements[target.name]]
                estimate["statuses"] = dict(Counter(s for s in states if s))
            per_metric[name] = estimate
        got = answers[target.name]
        results[target.name] = {
            "spec": redact(target.spec),
            "answered": sum(a.error is None for a in got),
            "errors": sum(a.error is not None for a in got),
            "metrics": per_metric,
            "performance": _performance(got),
        }
    comparisons = _comparisons(cfg, targets, names, info, columns)
    summary: dict[str, Any] = {
        "rows": len(rows),
        "targets": [{"name": t.name, "spec": redact(t.spec)} for t in targets],
        "metrics": info,
        "results": results,
        "comparisons": comparisons,
        "findings": _findings(comparisons, info),
        "judge": _judge_info(judge, prompts),
        "config": _config(cfg),
    }
    summary["gates"] = evaluate_gates(cfg.gates(), summary)
    return summary


def _pairs(cfg: EvalConfig, targets: list[Target]) -> list[tuple[str, str]]:
    names = [t.name for t in targets]
    if cfg.baseline is not None:
        return [(n, cfg.baseline) for n in names if n != cfg.baseline]
    # later targets against earlier ones: `--target base=... --target tuned=...` -> tuned vs base
    return [(names[j], names[i]) for i in range(len(names)) for j in range(i + 1, len(names))]


def _comparisons(
    cfg: EvalConfig,
    targets: list[Target],
    names: list[str],
    info: dict[str, Any],
    columns: dict[str, dict[str, list[float | None]]],
) -> list[dict[str, Any]]:
    found = []
    for a, b in _pairs(cfg, targets):
        for name in names:
            if info[name]["higher_is_better"] is None:
                continue
            found.append(
                stats.compare(
                    a,
                    b,
                    name,
                    columns[a][name],
                    columns[b][name],
                    info[name]["higher_is_better"],
                    cfg.bootstrap,
                    cfg.seed,
                ).to_dict()
            )
    return found


def _findings(comparisons: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """The differences that are significant at 5%, as data; the report words them."""
    findings = []
    for c in comparisons:
        if c["n"] == 0 or c["p_value"] >= SIGNIFICANCE or c["diff"]["mean"] is None:
            continue
        better = (c["diff"]["mean"] > 0) == (info[c["metric"]]["higher_is_better"] is not False)
        findings.append(
            {
                "better": c["a"] if better else c["b"],
                "worse": c["b"] if better else c["a"],
                "metric": c["metric"],
                "a": c["a"],
                "b": c["b"],
                "diff": c["diff"],
                "p_value": c["p_value"],
            }
        )
    return findings


def _judge_info(judge: Judge | None, prompts: list[JudgePrompt]) -> dict[str, Any] | None:
    if judge is None:
        return None
    return {
        "spec": redact(judge.spec),
        "calls": judge.calls,
        "cache_hits": judge.cache.hits,
        "prompts": {p.name: {"version": p.version, "fingerprint": p.fingerprint} for p in prompts},
    }


def _config(cfg: EvalConfig) -> dict[str, Any]:
    config = cfg.model_dump(mode="json")
    config["target"] = [redact(t) for t in cfg.target]
    if cfg.judge:
        config["judge"] = redact(cfg.judge)
    return config


def gate_value(result: dict[str, Any], metric: str) -> float | None:
    """A target's figure for a gate: a metric's mean, or a performance mean or percentile."""
    if metric in result["metrics"]:
        return result["metrics"][metric]["mean"]
    if metric in result["performance"]:
        return result["performance"][metric]["mean"]
    match = STAT_SUFFIX.match(metric)
    if match and match.group("base") in result["performance"]:
        return result["performance"][match.group("base")][match.group("stat")]
    return None


def evaluate_gates(gates: list[tuple[str, Gate]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    checked = []
    for direction, gate in gates:
        for target, result in summary["results"].items():
            if gate.target is not None and gate.target != target:
                continue
            value = gate_value(result, gate.metric)
            if value is None:
                passed = False
            else:
                passed = value >= gate.value if direction == "under" else value <= gate.value
            checked.append(
                {
                    "target": target,
                    "metric": gate.metric,
                    "direction": direction,
                    "threshold": gate.value,
                    "value": value,
                    "passed": passed,
                }
            )
    return checked


def check_gates(summary: dict[str, Any], out: Path) -> None:
    """Raise `RunError` naming each missed gate with its value and threshold; `slmforge eval`
    and a workflow's eval stage fail the same way."""
    failed = [g for g in summary["gates"] if not g["passed"]]
    if not failed:
        return
    missed = "; ".join(
        f"{g['target']} {g['metric']} = "
        f"{'n/a' if g['value'] is None else format(g['value'], '.4g')} "
        f"({'below' if g['direction'] == 'under' else 'above'} {g['threshold']:g})"
        for g in failed
    )
    raise RunError(f"{len(failed)} gate(s) failed: {missed} (report in {out})")
