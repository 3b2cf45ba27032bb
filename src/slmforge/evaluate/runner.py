"""`slmforge eval`: a data set through every target, scored, judged, summarized and reported.

The flow reads top to bottom in `run_eval`:
  check     - metric and evaluator names, gates, the data (references where a metric needs
              them), the output, every target and the judge (a remote one gets a one-token
              request, so an unreachable endpoint fails before any work, with exit code 2)
  answer    - each target answers every row: remote targets with up to --concurrency requests
              in flight (RemoteEngine retries 429/5xx), local ones one at a time, loaded only
              when their turn comes; answers are kept in OUT.partial/ as they arrive
  score     - every reference metric over every target's answers
  judge     - each evaluator on each answer, through the judge cache
  report    - rows.jsonl, summary.json, report.html, report.md into OUT, atomically
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import MANIFEST, Source, artifact, check_output, source_of
from slmforge.config.data import ReadOptions
from slmforge.config.evaluate import EvalConfig, TargetSpec
from slmforge.errors import InputError, Interrupted, RemoteError, RunError
from slmforge.evaluate import judge as judging
from slmforge.evaluate import metrics as registry
from slmforge.evaluate.dataset import EvalRow, read_rows
from slmforge.evaluate.partial import Answer, PartialRun, answer_key
from slmforge.evaluate.summary import check_gate_names, redact, summarize
from slmforge.runtime.engine import Engine, GenParams, complete
from slmforge.runtime.local import LocalEngine
from slmforge.runtime.specs import checked_spec, is_remote, load_engine

PROBE = [{"role": "user", "content": "Reply with OK."}]
PROBE_RETRIES = 1
PROBE_TIMEOUT_S = 15.0
EVAL_PREFIX_CACHE_BYTES = 128 << 20  # a local target keeps its rows' shared prompt prefixes
# a 400 from a content filter: ours and Azure OpenAI's ("...content management policy")
CONTENT_FILTER = re.compile(r"content[_ ]filter|content management policy", re.IGNORECASE)


@dataclass
class Target:
    name: str
    spec: str
    remote: bool
    engine: Engine | None = None  # remote engines are made (and probed) up front


@dataclass
class EvalResult:
    out: Path
    summary: dict[str, Any]

    @property
    def failed_gates(self) -> list[dict[str, Any]]:
        return [g for g in self.summary["gates"] if not g["passed"]]


def run_eval(cfg: EvalConfig) -> EvalResult:
    metrics = registry.resolve(cfg.metrics)
    defects = None
    if cfg.safety:
        from slmforge.evaluate.safety_eval import defect_scorer

        defects = defect_scorer(cfg.safety_policy, cfg.safety_threshold)
        metrics += defects.metrics()
    prompts = judging.resolve(cfg.judge_metrics) if cfg.judge else []
    check_gate_names(cfg, [m.name for m in metrics] + [p.name for p in prompts])
    options = ReadOptions(**cfg.model_dump(include=set(ReadOptions.model_fields)))
    rows = read_rows(cfg.data, options, cfg.context_field, cfg.limit)
    _check_references(cfg.data, rows, metrics)
    check_output(cfg.out, cfg.force)
    targets = [_check_target(t, cfg) for t in cfg.targets()]
    judge_engine = open_engine(cfg.judge, "--judge", cfg) if cfg.judge else None
    partial = PartialRun(cfg.out, cfg.resume, cfg.force)

    params = GenParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
    judgements: dict[str, list[dict[str, Any]]] = {}
    judge = None
    try:
        answers = {t.name: _answer_rows(t, rows, params, partial, cfg) for t in targets}
        scores = {name: _score(metrics, rows, got) for name, got in answers.items()}
        if judge_engine is not None and cfg.judge:
            cache = judging.JudgeCache(
                cfg.judge_cache or partial.judge_path, seed_from=_previous_caches(cfg, partial)
            )
            judge = judging.Judge(judge_engine, cfg.judge, cache)
            judgements = _judge_rows(judge, prompts, rows, answers, cfg)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; {len(partial.answers)} answers are kept in {partial.folder}: "
            "run the same command with --resume to continue"
        ) from None

    summary = summarize(cfg, rows, targets, metrics, prompts, answers, scores, judgements, judge)
    summary["data"] = {**source_of(cfg.data).model_dump(), "rows": len(rows)}
    if defects is not None:
        summary["safety"] = defects.examples(rows, answers)
    out = _write(cfg, rows, targets, answers, scores, judgements, summary, judge)
    partial.remove()
    return EvalResult(out, summary)


# -- check ---------------------------------------------------------------------------------------
def _check_references(path: Path, rows: list[EvalRow], metrics: list[registry.Metric]) -> None:
    needing = [m.name for m in metrics if m.needs_reference]
    missing = [row for row in rows if row.reference is None]
    if needing and missing:
        where = ", ".join(f"{path}:{row.line}" for row in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(
            f"{where}{more}: no reference answer (a final assistant message or response), which "
            f"{', '.join(needing)} need; add references or pick metrics that need none "
            "(--metrics length --metrics refusal, or judge metrics with --judge)"
        )


def _check_target(target: TargetSpec, cfg: EvalConfig) -> Target:
    if not is_remote(target.spec):
        checked_spec(target.spec, f"target {target.name}")  # folders, engine, adapters
        return Target(target.name, target.spec, remote=False)
    engine = open_engine(target.spec, f"target {target.name}", cfg)
    return Target(target.name, target.spec, remote=True, engine=engine)


def open_engine(spec: str, label: str, cfg: EvalConfig) -> Engine:
    """The engine for `spec`; a remote one must answer a one-token request first."""
    if not is_remote(spec):
        return load_engine(spec, device=cfg.device)
    remote = {"api_key_env": cfg.api_key_env}
    probe = load_engine(spec, max_retries=PROBE_RETRIES, timeout_s=PROBE_TIMEOUT_S, **remote)
    try:
        complete(probe, PROBE, GenParams(max_tokens=1))
    except RemoteError as err:
        raise InputError(f"{label} cannot be reached: {err}") from None
    return load_engine(spec, max_retries=cfg.max_retries, timeout_s=cfg.timeout_s, **remote)


# -- answer --------------------------------------------------------------------------------------
def _answer_rows(
    target: Target, rows: list[EvalRow], params: GenParams, partial: PartialRun, cfg: EvalConfig
) -> list[Answer]:
    keys = [answer_key(target.spec, params.model_dump(), row.key()) for row in rows]
    answers: list[Answer | None] = [partial.get(key) for key in keys]
    todo = [i for i, answer in enumerate(answers) if answer is None]
    if len(todo) < len(rows):
        progress.info(f"{target.name}: {len(rows) - len(todo)} answers kept from the last run")
    if todo:
        engine = target.engine
        if engine is None:
            progress.info(f"loading {target.name} ({target.spec})")
            engine = load_engine(target.spec, device=cfg.device)
            if isinstance(engine, LocalEngine):  # rows share system prompts and tools
                engine.enable_prefix_cache(EVAL_PREFIX_CACHE_BYTES)

        def ask(i: int) -> Answer:
            answer = _ask(engine, rows[i], params)
            partial.put(keys[i], answer)
            answers[i] = answer
            return answer

        workers = cfg.concurrency if target.remote else 1
        bounded(f"answers {target.name}", todo, ask, workers, len(rows))
    done = [a for a in answers if a is not None]
    failed = [a for a in done if a.error]
    if failed and len(failed) == len(done):
        raise RunError(
            f"target {target.name}: every request failed ({failed[-1].error}); "
            "fix the target and run again with --resume"
        )
    if failed:
        progress.warn(f"target {target.name}: {len(failed)} of {len(done)} requests failed")
    return done


def _ask(engine: Engine, row: EvalRow, params: GenParams) -> Answer:
    if row.tools:  # the row's functions, offered as an app would (the model decides)
        params = params.model_copy(update={"tools": row.tools})
    try:
        return Answer.of(complete(engine, row.prompt, params))
    except RemoteError as err:  # after the engine's own retries: recorded, retried on --resume
        if err.status == 400 and CONTENT_FILTER.search(str(err)):
            # the endpoint's content filter refused the prompt: an outcome, not a failure
            return Answer(finish_reason="content_filter")
        return Answer(error=str(err))


def bounded(
    label: str, items: list[int], work: Callable[[int], Any], workers: int, total: int
) -> None:
    """Run `work` on every item with at most `workers` in flight, with a progress bar."""
    with progress.task(label, total=total) as bar:
        bar.update(completed=total - len(items))
        if workers == 1:
            for item in items:
                work(item)
                bar.advance()
            return
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for future in as_completed([pool.submit(work, item) for item in items]):
                future.result()
                bar.advance()
        finally:
            # on Ctrl-C or an error: drop what has not started, let running requests finish
            pool.shutdown(wait=True, cancel_futures=True)


# -- score ---------------------------------------------------------------------------------------
def _score(
    metrics: list[registry.Metric], rows: list[EvalRow], answers: list[Answer]
) -> dict[str, list[float | None]]:
    """Every metric's per-row scores; rows without an answer get None."""
    ok = [i for i, a in enumerate(answers) if a.error is None]
    scores: dict[str, list[float | None]] = {}
    for metric in metrics:
        texts, references = [answers[i].text for i in ok], [rows[i].reference for i in ok]
        if getattr(metric, "uses_tools", False):  # scored against each row's functions
            got = metric.score(texts, references, [rows[i].tools for i in ok])
        else:
            got = metric.score(texts, references)
        column: list[float | None] = [None] * len(rows)
        for i, value in zip(ok, got, strict=True):
            column[i] = value
        scores[metric.name] = column
    return scores


# -- judge ---------------------------------------------------------------------------------------
def _previous_caches(cfg: EvalConfig, partial: PartialRun) -> list[Path]:
    """Judge replies of an earlier run over the same OUT (a --force rerun costs nothing)."""
    return [cfg.out / "judge_cache.jsonl", partial.judge_path]


def _judge_rows(
    judge: judging.Judge,
    prompts: list[judging.JudgePrompt],
    rows: list[EvalRow],
    answers: dict[str, list[Answer]],
    cfg: EvalConfig,
) -> dict[str, list[dict[str, Any]]]:
    """{target: [{evaluator: judgement dict} per row]}."""
    results: dict[str, list[dict[str, Any]]] = {t: [{} for _ in rows] for t in answers}
    jobs = [(t, i, p) for t in answers for i in range(len(rows)) for p in prompts]

    def work(job_index: int) -> None:
        target, i, prompt = jobs[job_index]
        answer = answers[target][i]
        if answer.error is not None:
            verdict = judging.Judgement("error", reason="the target gave no answer")
        else:
            inputs = {
                "question": rows[i].question,
                "answer": answer.text,
                "context": rows[i].context,
                "reference": rows[i].reference,
            }
            verdict = judge.evaluate(prompt, inputs)
        results[target][i][prompt.name] = verdict.to_dict()

    workers = cfg.concurrency if is_remote(judge.spec) else 1
    bounded("judge", list(range(len(jobs))), work, workers, len(jobs))
    # in evaluator order, whatever order the replies came in
    return {
        t: [{p.name: verdicts[p.name] for p in prompts} for verdicts in per_row]
        for t, per_row in results.items()
    }


# -- write ---------------------------------------------------------------------------------------
def _row_records(
    rows: list[EvalRow],
    targets: list[Target],
    answers: dict[str, list[Answer]],
    scores: dict[str, dict[str, list[float | None]]],
    judgements: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    records = []
    for row in rows:
        per_target = {}
        for target in targets:
            answer = answers[target.name][row.index]
            per_target[target.name] = {
                **answer.to_dict(),
                "scores": {m: column[row.index] for m, column in scores[target.name].items()},
                "judge": judgements.get(target.name, [{}] * len(rows))[row.index],
            }
        records.append(
            {
                "row": row.index,
                "line": row.line,
                "prompt": row.prompt,
                "reference": row.reference,
                "context": row.context,
                "targets": per_target,
            }
        )
    return records


def _write(
    cfg: EvalConfig,
    rows: list[EvalRow],
    targets: list[Target],
    answers: dict[str, list[Answer]],
    scores: dict[str, dict[str, list[float | None]]],
    judgements: dict[str, list[dict[str, Any]]],
    summary: dict[str, Any],
    judge: judging.Judge | None,
) -> Path:
    import json

    from slmforge.evaluate.report import render_html, render_markdown

    records = _row_records(rows, targets, answers, scores, judgements)
    with artifact(cfg.out, "eval", force=cfg.force) as art:
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (art.path / "rows.jsonl").write_text("".join(x + "\n" for x in lines), "utf-8")
        art.write_json("summary.json", summary)
        (art.path / "report.md").write_text(render_markdown(summary), "utf-8")
        (art.path / "report.html").write_text(render_html(summary, records), "utf-8")
        if judge is not None:
            judge.cache.dump(art.path / "judge_cache.jsonl")
        art.manifest.source["data"] = source_of(cfg.data, kind="data")
        for target in targets:
            art.manifest.source[f"target:{target.name}"] = _target_source(target)
        art.manifest.config = summary["config"]
        art.manifest.metrics = {
            name: {m: v["mean"] for m, v in result["metrics"].items()}
            for name, result in summary["results"].items()
        }
    return Path(cfg.out)


def _target_source(target: Target) -> Source:
    """An artifact folder is identified by its manifest's hash; anything else by its spec
    (hashing a bare multi-GB model folder file by file is not worth it here)."""
    folder = Path(target.spec)
    if not target.remote and (folder / MANIFEST).is_file():
        return source_of(folder, kind="target")
    return Source(path=redact(target.spec), kind="target")
