"""Jobs run in worker processes: a supervisor thread in the server, one process per job.

`WorkerPool` (in the server process) claims queued jobs atomically from the store, one per free
slot, and starts `python -m slmforge.jobs.worker HOME JOB_ID` for each. The process dies with
the server (Linux parent-death signal), so a killed server never leaves training behind; at
the next start `recover_interrupted` reports those jobs failed or queues them to resume. A
cancelled job's process is killed; a process that exits without finishing its job marks it
failed with the end of its log.

`run_job` (in the worker process) runs `slmforge.train.sft.finetune` and turns what it writes
(`metrics.jsonl`, checkpoints) into job events and checkpoint records while it trains.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.jobs.store import Job, JobStore
from slmforge.processes import process_start

POLL_S = 0.2
KILL_GRACE_S = 2.0
LOG_LINES_IN_ERROR = 5
PR_SET_PDEATHSIG = 1
METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "train_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
# What preference objectives (DPO, ORPO, SimPO) log beside the loss, in metrics.jsonl as
# `reward_accuracy` / `eval_reward_accuracy`, in events and results as `train_...` / `valid_...`.
PAIR_METRICS = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")
PAIR_COLUMNS = tuple(f"{side}_{name}" for side in ("train", "valid") for name in PAIR_METRICS)
# Columns of OpenAI's results file that repeat a metric under another name.
CSV_ALIASES = {
    "train_accuracy": "train_mean_token_accuracy",
    "full_valid_loss": "valid_loss",
    "full_valid_mean_token_accuracy": "valid_mean_token_accuracy",
}


def openai_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A `metrics.jsonl` record's values under the names OpenAI's events, checkpoints and
    results file use (a record holds training or validation figures, or both)."""
    named: dict[str, Any] = {}
    for side, prefix in (("train", ""), ("valid", "eval_")):
        if f"{prefix}loss" not in record:
            continue
        named[f"{side}_loss"] = record[f"{prefix}loss"]
        if f"{prefix}token_accuracy" in record:
            named[f"{side}_mean_token_accuracy"] = record[f"{prefix}token_accuracy"]
        for name in PAIR_METRICS:
            if f"{prefix}{name}" in record:
                named[f"{side}_{name}"] = record[f"{prefix}{name}"]
    return named


def _libc_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a killed server's jobs still fail at restart
        return None


# Looked up here, not in the forked child, where loading a library could deadlock.
_PRCTL = _libc_prctl()


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the thread that started it ends."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Running:
    job_id: str
    process: subprocess.Popen
    log: Path
    killed_at: float | None = None


class WorkerPool:
    """Runs up to `slots` jobs at once, each in its own process."""

    def __init__(self, store: JobStore, slots: int, resume_interrupted: bool = False) -> None:
        self.store = store
        self.slots = slots
        self.logs = store.root / "logs"
        self.running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kill_leftovers()
        recovered = store.recover_interrupted(resume_interrupted)
        if recovered:
            action = "queued to resume" if resume_interrupted else "marked failed"
            progress.warn(f"{len(recovered)} interrupted jobs {action}: {', '.join(recovered)}")

    def _kill_leftovers(self) -> None:
        """Worker processes a killed server left (where the death signal is unavailable)."""
        for job in self.store.jobs_with_status("running"):
            if job.pid and process_start(job.pid) == job.pid_start:
                os.killpg(job.pid, signal.SIGKILL)

    def start(self) -> None:
        # The parent-death signal follows the thread that started the child: the supervisor
        # thread lives as long as the server, so its children do too.
        self._thread = threading.Thread(target=self._supervise, name="slmforge-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _supervise(self) -> None:
        try:
            while not self._stop.is_set():
                self.tick()
                self._stop.wait(POLL_S)
        finally:
            for running in list(self.running.values()):
                self._kill(running, force=True)

    def tick(self) -> None:
        """One round: kill cancelled jobs, reap exited processes, start queued jobs."""
        for running in list(self.running.values()):
            job = self.store.get_job(running.job_id)
            if job is not None and job.status == "cancelled":
                self._kill(running)
            code = running.process.poll()
            if code is None:
                continue
            del self.running[running.job_id]
            if job is not None and job.status == "running":
                tail = _tail(running.log)
                self.store.fail(
                    job.id,
                    "worker_exited",
                    f"The worker process exited with code {code} before the job finished"
                    + (f": {tail}" if tail else "."),
                )
        while len(self.running) < self.slots and not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                break
            self.running[job.id] = self._launch(job)

    def _launch(self, job: Job) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{job.id}.log"
        command = [sys.executable, "-m", "slmforge.jobs.worker", str(self.store.root), job.id]
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        self.store.set_worker(job.id, process.pid, process_start(process.pid))
        return Running(job.id, process, log)

    def _kill(self, running: Running, force: bool = False) -> None:
        """SIGTERM the job's process group, SIGKILL once the grace period is over."""
        if running.process.poll() is not None:
            return
        now = time.monotonic()
        if running.killed_at is None:
            running.killed_at = now
            sig = signal.SIGKILL if force else signal.SIGTERM
        elif now - running.killed_at > KILL_GRACE_S:
            sig = signal.SIGKILL
        else:
            return
        try:
            os.killpg(running.process.pid, sig)
        except ProcessLookupError:
            return
        if force:
            running.process.wait(timeout=10)


def _tail(log: Path) -> str:
    """What the worker said last: its exception (from the last traceback), else its last lines."""
    if not log.is_file():
        return ""
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        # the first unindented line after the frames is `Type: message`
        after = lines[starts[-1] + 1 :]
        first = next((i for i, line in enumerate(after) if not line.startswith(" ")), None)
        if first is not None:
            return " | ".join(after[first : first + LOG_LINES_IN_ERROR])[:1000]
    return " | ".join(lines[-LOG_LINES_IN_ERROR:])[:1000]


def metrics_csv(records: list[dict[str, Any]], pairs: bool = False) -> bytes:
    """The step metrics as OpenAI's result file has them, one row per training step; a
    preference (`pairs`) job's file has the reward and log-probability columns too."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        row = rows.setdefault(record["step"], {"step": record["step"]})
        row.update(openai_metrics(record))
        row.update({alias: row[name] for alias, name in CSV_ALIASES.items() if name in row})
    buffer = io.StringIO()
    columns = METRIC_COLUMNS + PAIR_COLUMNS if pairs else METRIC_COLUMNS
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for step in sorted(rows):
        if step > 0:
            writer.writerow(rows[step])
    return buffer.getvalue().encode()


# -- inside the worker process -----------------------------------------------------------------
class Watcher:
    """Turns the run's metric records and checkpoints into job events and checkpoint rows."""

    def __init__(self, store: JobStore, job: Job, work: Path) -> None:
        self.store = store
        self.job = job
        self.work = work
        # (step, is a training record) already in the store: a resumed run reports each step
        # once, including steps a killed worker logged but had not reported yet
        self.reported: set[tuple[int, bool]] = store.reported_steps(job.id)
        self.records: list[dict[str, Any]] = []
        self.checkpoints: set[int] = set()

    def _read_records(self) -> list[dict[str, Any]] | None:
        """Complete lines of metrics.jsonl (a line being appended is left for the next sweep);
        None when the file is gone (the run is moving into its final folder)."""
        try:
            text = (self.work / "metrics.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        lines = text.split("\n")[:-1]  # the part after the last newline may be unfinished
        return [json.loads(line) for line in lines if line.strip()]

    def sweep(self) -> None:
        from slmforge.train.checkpoint import checkpoint_dir

        records = self._read_records()
        if records is None:
            return
        self.records = records
        for record in records:
            key = (record["step"], "loss" in record)
            if key not in self.reported:
                self.reported.add(key)
                self._event(record)
        for folder in sorted(checkpoint_dir(self.work).glob("step-*")):
            step = int(folder.name.removeprefix("step-"))
            if step not in self.checkpoints:
                self.checkpoints.add(step)
                self.checkpoint(step, folder)

    def metrics_at(self, step: int) -> dict[str, Any]:
        metrics: dict[str, Any] = {"step": step}
        for record in self.records:
            if record["step"] > step:
                break
            metrics.update(openai_metrics(record))
        return metrics

    def checkpoint(self, step: int, path: Path) -> None:
        name = f"{self.job.fine_tuned_model_name}:ckpt-step-{step}"
        self.store.add_checkpoint(self.job.id, step, self.metrics_at(step), name, path)

    def _event(self, record: dict[str, Any]) -> None:
        step, total = record["step"], self.job.total_steps
        data = {"step": step, "total_steps": total, **openai_metrics(record)}
        if "loss" in record:
            data["learning_rate"] = record.get("lr")
            message = f"Step {step}/{total}: training loss={record['loss']:.4f}" + _figures(
                record, ""
            )
        else:
            message = f"Step {step}/{total}: validation loss={record['eval_loss']:.4f}" + (
                _figures(record, "eval_")
            )
        self.store.add_event(self.job.id, message, data=data, kind="metrics")


def _figures(record: dict[str, Any], prefix: str) -> str:
    """What an event's message says beside the loss: the reward accuracy and margin of a
    preference objective, else the token accuracy of a training step."""
    if f"{prefix}reward_accuracy" in record:
        return (
            f", reward accuracy={record[f'{prefix}reward_accuracy']:.3f}, "
            f"reward margin={record[f'{prefix}reward_margin']:.3f}"
        )
    if not prefix and "token_accuracy" in record:
        return f", token accuracy={record['token_accuracy']:.3f}"
    return ""


def _watch(watcher: Watcher, done: threading.Event) -> None:
    while not done.wait(POLL_S):
        try:
            watcher.sweep()
        except (OSError, ValueError, sqlite3.Error) as exc:  # the next sweep tries again
            progress.warn(f"could not record progress: {type(exc).__name__}: {exc}")


def run_job(store: JobStore, job_id: str) -> None:
    """Train one claimed job to the end, recording its events, checkpoints and result."""
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.config.methods import get_objective
    from slmforge.errors import SlmforgeError
    from slmforge.train import checkpoint as ckpt
    from slmforge.train.sft import finetune, work_dir

    job = store.get_job(job_id)
    if job is None or job.status != "running":
        return
    cfg = FinetuneConfig(**job.config)
    work = work_dir(cfg.out)
    latest = ckpt.latest_checkpoint(work)
    if job.resume and latest is not None:
        cfg = cfg.model_copy(update={"resume": True})
        store.add_event(job_id, f"Resuming from checkpoint {latest.name}")
    elif work.exists():
        cfg = cfg.model_copy(update={"force": True})
    watcher = Watcher(store, job, work)
    done = threading.Event()
    thread = threading.Thread(target=_watch, args=(watcher, done), daemon=True)
    thread.start()
    try:
        finetune(cfg)
    except SlmforgeError as exc:  # ModelError -> model_error, as OpenAI's codes are spelled
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
        store.fail(job_id, code, str(exc))
        return
    except Exception as exc:
        store.fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        done.set()
        thread.join()
    watcher.work = Path(cfg.out)  # the finished artifact holds the whole metrics log
    watcher.sweep()
    records = watcher.records
    final = max((r["step"] for r in records), default=0)
    watcher.checkpoint(final, Path(cfg.out))
    pairs = get_objective(cfg.objective).pairs
    results = store.add_file(
        metrics_csv(records, pairs), "step_metrics.csv", "fine-tune-results", ".csv"
    )
    store.succeed(job_id, job.fine_tuned_model_name, [results["id"]], _trained_tokens(cfg, final))


def _trained_tokens(cfg: Any, steps: int) -> int:
    """Tokens the run trained on: the data's tokens scaled to the rows its steps read (a
    preference pair is two sequences: the prompt with each answer)."""
    from slmforge.config.methods import get_objective
    from slmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if get_objective(cfg.objective).pairs:
        from slmforge.data.preference import read_preference_examples

        rows = [
            [p.chosen_messages, p.rejected_messages]
            for p in read_preference_examples(cfg.data, cfg)
        ]
    else:
        from slmforge.data.formats import read_examples

        rows = [[e.messages] for e in read_examples(cfg.data, cfg)]

    def tokens(messages: list[dict[str, Any]]) -> int:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = "\n".join(m["content"] for m in messages)
        return min(len(tokenizer(text, add_special_tokens=False)["input_ids"]), cfg.max_seq_len)

    counts = [sum(tokens(messages) for messages in row) for row in rows]
    per_row = sum(counts) / max(len(counts), 1)
    return int(per_row * steps * cfg.batch_size * cfg.grad_accum)


def main(argv: list[str]) -> int:
    """`python -m slmforge.jobs.worker HOME JOB_ID`; the log file is this process's stderr.

    An unexpected error has already marked the job failed; its traceback goes to the log."""
    import warnings

    root, job_id = argv
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    progress.configure("plain")
    run_job(JobStore(Path(root)), job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
