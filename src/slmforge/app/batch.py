"""`slmforge app compare`: the same prompts through a local and a cloud model, side by side.

This is `slmforge eval` with two targets, `local` and `cloud` (cloud the baseline), plus what
only a pair has. The flow reads top to bottom in `run_compare`:
  check    - the metrics (and the similarity model), the judge engine (a remote judge answers
             a one-token request first), the output
  eval     - `run_eval` answers every prompt on both sides (remote with bounded concurrency,
             timings measured by the engines) and writes its report into OUT/eval/
  pair     - how alike each pair of answers is (`--similarity`, an eval metric applied with the
             cloud answer as the reference) and, with `--judge`, which answer the judge
             prefers and why (`app/scoring.py:PairJudge`, the same verdict the web app shows)
  write    - compare.jsonl (one row per prompt), summary.json (speed per side: time to first
             token and tokens/s mean/p50/p95 and local/cloud ratios; similarity; preferences),
             compare.md (the side-by-side table), all in one artifact folder

Until the artifact is written, the work lives in `OUT.partial/`: the eval (whose own partial
folder keeps each answer as it arrives) and the judge's replies (`judge.jsonl`), so an
interrupted compare continues with `--resume` and asks no model or judge again for what it
already has.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.app.scoring import PairJudge
from slmforge.artifacts import MANIFEST, artifact, check_output, read_manifest
from slmforge.config.app_compare import AppCompareConfig
from slmforge.config.data import ReadOptions
from slmforge.config.evaluate import EvalConfig
from slmforge.errors import InputError, Interrupted
from slmforge.evaluate import metrics as registry
from slmforge.evaluate.partial import claim_partial, partial_dir
from slmforge.evaluate.runner import bounded, open_engine, run_eval
from slmforge.evaluate.stats import bootstrap_mean
from slmforge.evaluate.summary import redact
from slmforge.runtime.specs import is_remote

SIDES = ("local", "cloud")
SPEED = {"ttft_s": "time to first token (s)", "tokens_per_s": "decode tokens/s"}
STATS = ("mean", "p50", "p95")


@dataclass
class CompareResult:
    out: Path
    summary: dict[str, Any]


def run_compare(cfg: AppCompareConfig) -> CompareResult:
    similarity = similarity_metric(cfg.similarity, cfg.metrics)
    eval_cfg = eval_config(cfg)
    check_output(cfg.out, cfg.force)
    stage = staging_folder(cfg)
    judge = None
    if cfg.judge:
        engine = open_engine(cfg.judge, "--judge", eval_cfg)
        judge = PairJudge(engine, redact(cfg.judge), cache=stage / "judge.jsonl")
    try:
        eval_summary = _answer_both_sides(eval_cfg, stage / "eval", cfg.resume)
        rows = _read_rows(stage / "eval" / "rows.jsonl")
        _add_similarity(rows, similarity)
        if judge is not None and cfg.judge:
            _add_preferences(rows, judge, cfg.concurrency if is_remote(cfg.judge) else 1)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(
            f"interrupted; what is done is kept in {stage}: run the same command with --resume "
            "to continue"
        ) from None
    summary = summarize(cfg, rows, eval_summary)
    with artifact(cfg.out, "app-compare", force=cfg.force) as art:
        shutil.copytree(stage / "eval", art.path / "eval")
        _write(art.path, rows, summary)
        art.manifest.source = read_manifest(art.path / "eval").source  # data and both sides
        art.manifest.config = summary["config"]
        art.manifest.metrics = _headline(summary)
    shutil.rmtree(stage, ignore_errors=True)
    return CompareResult(Path(cfg.out), summary)


def staging_folder(cfg: AppCompareConfig) -> Path:
    """`OUT.partial/`, where a compare works until its artifact is written."""
    return claim_partial(partial_dir(Path(cfg.out)), cfg.resume, cfg.force, "app compare")


def _answer_both_sides(eval_cfg: EvalConfig, folder: Path, resume: bool) -> dict[str, Any]:
    """The eval's summary: the finished eval in `folder` when resuming after it completed,
    else a run that reuses the answers its partial folder kept."""
    if resume and (folder / MANIFEST).is_file():
        return json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    kept = resume and partial_dir(folder).exists()
    # force: `folder` lies inside our own staging folder, never a user's output
    result = run_eval(eval_cfg.model_copy(update={"out": folder, "resume": kept, "force": True}))
    return result.summary


# -- check ---------------------------------------------------------------------------------------
def similarity_metric(name: str, metrics: list[str]) -> registry.Metric:
    """The pair metric, once the per-side metric names are known to exist."""
    registry.resolve(metrics)
    metric = registry.METRICS.get(name)
    if metric is None or not metric.needs_reference or metric.higher_is_better is None:
        raise InputError(
            f"--similarity {name}: not a metric that compares two texts; use "
            "embedding_similarity, f1, chrf, rougeL or another metric that scores an answer "
            "against a reference"
        )
    if name == "embedding_similarity":
        registry.embedding_model()  # a missing package or model fails now, not after the answers
    return metric


def eval_config(cfg: AppCompareConfig) -> EvalConfig:
    """The eval of both sides; `out` is set to the artifact's eval/ folder when it runs."""
    shared = cfg.model_dump(
        include=set(ReadOptions.model_fields)
        | {"data", "out", "metrics", "limit", "max_tokens", "temperature", "seed"}
        | {"concurrency", "max_retries", "timeout_s", "api_key_env", "device"}
    )
    return EvalConfig(
        target=[f"local={cfg.local}", f"cloud={cfg.cloud}"], baseline="cloud", **shared
    )


# -- pair ----------------------------------------------------------------------------------------
def _read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _question(row: dict[str, Any]) -> str:
    users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    return users[-1] if users else ""


def _answered(row: dict[str, Any]) -> bool:
    return all(row["targets"][side]["error"] is None for side in SIDES)


def _add_similarity(rows: list[dict[str, Any]], metric: registry.Metric) -> None:
    both = [row for row in rows if _answered(row)]
    scores = metric.score(
        [row["targets"]["local"]["text"] for row in both],
        [row["targets"]["cloud"]["text"] for row in both],
    )
    for row in rows:
        row["similarity"] = None
    for row, score in zip(both, scores, strict=True):
        row["similarity"] = score


def _add_preferences(rows: list[dict[str, Any]], judge: PairJudge, workers: int) -> None:
    def work(i: int) -> None:
        row = rows[i]
        if not _answered(row):
            row["preference"] = {"preferred": None, "reason": "a side gave no answer"}
            return
        answers = {side: row["targets"][side]["text"] for side in SIDES}
        row["preference"] = judge.prefer(_question(row), answers).to_dict()

    bounded("judge", list(range(len(rows))), work, workers, len(rows))


# -- summarize -----------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def speed(eval_summary: dict[str, Any]) -> dict[str, Any]:
    """Per figure: each side's mean/p50/p95 (from the eval's performance) and local/cloud."""
    result: dict[str, Any] = {}
    for key in SPEED:
        sides = {s: eval_summary["results"][s]["performance"][key] for s in SIDES}
        per_side = {s: {stat: sides[s].get(stat) for stat in ("n", *STATS)} for s in SIDES}
        ratio = {stat: _ratio(sides["local"].get(stat), sides["cloud"].get(stat)) for stat in STATS}
        result[key] = {**per_side, "local_over_cloud": ratio}
    return result


def summarize(
    cfg: AppCompareConfig, rows: list[dict[str, Any]], eval_summary: dict[str, Any]
) -> dict[str, Any]:
    scores = [row["similarity"] for row in rows if row["similarity"] is not None]
    similarity = bootstrap_mean(scores, seed=cfg.seed).to_dict()
    states = [row.get("preference", {}) for row in rows]
    preference = None
    if cfg.judge:
        counts = {
            w: sum(p.get("preferred") == w for p in states) for w in ("local", "cloud", "tie")
        }
        unjudged = sum(p.get("preferred") is None for p in states)
        preference = {"judge": redact(cfg.judge), **counts, "unjudged": unjudged}
    results = eval_summary["results"]
    config = cfg.model_dump(mode="json")
    config.update({"local": redact(cfg.local), "cloud": redact(cfg.cloud)})
    if cfg.judge:
        config["judge"] = redact(cfg.judge)
    return {
        "rows": len(rows),
        "sides": {s: {k: results[s][k] for k in ("spec", "answered", "errors")} for s in SIDES},
        "speed": speed(eval_summary),
        "similarity": {"metric": cfg.similarity, **similarity},
        "preference": preference,
        "eval": "eval/summary.json",
        "config": config,
    }


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    speeds = summary["speed"]
    figures = {f"{key}_{side}": speeds[key][side]["mean"] for key in SPEED for side in SIDES}
    figures["similarity"] = summary["similarity"]["mean"]
    return figures


# -- write ---------------------------------------------------------------------------------------
def _row_record(row: dict[str, Any]) -> dict[str, Any]:
    sides = {
        side: {
            k: row["targets"][side][k]
            for k in (
                "text",
                "finish_reason",
                "ttft_s",
                "tokens_per_s",
                "completion_tokens",
                "error",
            )
        }
        for side in SIDES
    }
    record = {"row": row["row"], "line": row["line"], "question": _question(row), **sides}
    record["similarity"] = row["similarity"]
    if "preference" in row:
        record["preference"] = row["preference"]
    return record


def _write(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from slmforge.app.compare_report import render_markdown

    records = [_row_record(row) for row in rows]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (folder / "compare.jsonl").write_text(lines, encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (folder / "compare.md").write_text(render_markdown(summary, records), encoding="utf-8")
