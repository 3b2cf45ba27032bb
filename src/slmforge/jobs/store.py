"""The jobs API's store: files, fine-tuning jobs, their events and checkpoints, in SQLite.

One database (`<home>/jobs/jobs.db`, WAL mode) holds every record; every state change is one
`BEGIN IMMEDIATE` transaction, so the web process, the worker supervisor and the worker
processes can write at once and a crash at any point leaves the last committed state. Jobs that
were running when the server stopped are found by `recover_interrupted` at the next start.
Uploaded bytes live beside it, content-addressed (`blobs/<sha256>.<suffix>`): a client's file
name is only ever a column, never a path.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.artifacts import atomic_file
from slmforge.http.ids import new_id

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
# Data containers the validator reads, by the suffix a blob is stored with.
SUFFIXES = {".jsonl": ".jsonl", ".json": ".json", ".csv": ".csv", ".parquet": ".parquet"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, bytes INTEGER NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, sha256 TEXT NOT NULL, suffix TEXT NOT NULL,
    status TEXT NOT NULL, status_details TEXT, examples INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
    model TEXT NOT NULL, fine_tuned_model_name TEXT NOT NULL, training_file TEXT NOT NULL,
    validation_file TEXT, hyperparameters TEXT NOT NULL, suffix TEXT, seed INTEGER NOT NULL,
    status TEXT NOT NULL, fine_tuned_model TEXT, trained_tokens INTEGER, error TEXT,
    result_files TEXT NOT NULL DEFAULT '[]', config TEXT NOT NULL, total_steps INTEGER,
    metadata TEXT, pid INTEGER, pid_start TEXT, resume INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, data TEXT,
    type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL, path TEXT NOT NULL, UNIQUE (job_id, step)
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints (job_id, seq);
"""


def now() -> int:
    return int(time.time())


@dataclass
class Job:
    """A row of `jobs` with its JSON columns decoded."""

    row: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.row[name]
        except KeyError:
            raise AttributeError(name) from None


_JSON_COLUMNS = ("hyperparameters", "error", "result_files", "config", "metadata", "data")


def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    values = dict(row)
    for column in _JSON_COLUMNS:
        if column in values and isinstance(values[column], str):
            values[column] = json.loads(values[column])
    return values


class JobStore:
    """Files, jobs, events and checkpoints under `root` (a folder it creates)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "jobs.db"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=30000")
            yield db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        with self._connect() as db:
            return _decode(db.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [_decode(r) for r in db.execute(sql, args).fetchall()]  # type: ignore[misc]

    # -- files -------------------------------------------------------------------------------
    def blob_path(self, sha256: str, suffix: str) -> Path:
        return self.blobs / f"{sha256}{suffix}"

    def put_blob(self, content: bytes, suffix: str) -> tuple[str, Path]:
        """Store bytes under their SHA-256 (written atomically; the same bytes are kept once)."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.blob_path(digest, suffix)
        if not path.exists():
            with atomic_file(path, force=True) as temp:
                temp.write_bytes(content)
        return digest, path

    def add_file(
        self,
        content: bytes,
        filename: str,
        purpose: str,
        suffix: str,
        status: str = "processed",
        status_details: str | None = None,
        examples: int = 0,
    ) -> dict[str, Any]:
        digest, _ = self.put_blob(content, suffix)
        row = {
            "id": new_id("file-"),
            "created_at": now(),
            "bytes": len(content),
            "filename": filename,
            "purpose": purpose,
            "sha256": digest,
            "suffix": suffix,
            "status": status,
            "status_details": status_details,
            "examples": examples,
        }
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files VALUES (:id, :created_at, :bytes, :filename, :purpose, "
                ":sha256, :suffix, :status, :status_details, :examples)",
                row,
            )
        return row

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM files WHERE id = ?", (file_id,))

    def list_files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        if purpose:
            return self._all(
                "SELECT * FROM files WHERE purpose = ? ORDER BY created_at DESC, rowid DESC",
                (purpose,),
            )
        return self._all("SELECT * FROM files ORDER BY created_at DESC, rowid DESC")

    def delete_file(self, file_id: str) -> bool:
        """Remove the record; the blob goes too unless another record holds the same bytes."""
        with self.transaction() as db:
            row = db.execute("SELECT sha256, suffix FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            shared = db.execute(
                "SELECT 1 FROM files WHERE sha256 = ? AND suffix = ?", tuple(row)
            ).fetchone()
        if shared is None:
            self.blob_path(*row).unlink(missing_ok=True)
        return True

    def file_path(self, row: dict[str, Any]) -> Path:
        return self.blob_path(row["sha256"], row["suffix"])

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, values: dict[str, Any]) -> Job:
        row = {
            "validation_file": None,
            "suffix": None,
            "metadata": None,
            "total_steps": None,
            **values,
            "created_at": now(),
            "status": "queued",
        }
        encoded = {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in row.items()}
        columns = ", ".join(encoded)
        marks = ", ".join(f":{k}" for k in encoded)
        with self.transaction() as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", encoded)
            _event(db, row["id"], "info", f"Validating training file: {row['training_file']}")
            _event(db, row["id"], "info", "Files validated, moving job to queued state")
        return self.get_job(row["id"])  # type: ignore[return-value]

    def get_job(self, job_id: str) -> Job | None:
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job(row) if row else None

    def list_jobs(self, after: str | None, limit: int) -> tuple[list[Job], bool]:
        """Newest first; `after` is the last id of the previous page. Returns (page, has_more)."""
        bound = (
            "(SELECT seq FROM jobs WHERE id = ?)" if after else "(SELECT MAX(seq) + 1 FROM jobs)"
        )
        args: tuple = (after, limit + 1) if after else (limit + 1,)
        rows = self._all(f"SELECT * FROM jobs WHERE seq < {bound} ORDER BY seq DESC LIMIT ?", args)
        return [Job(r) for r in rows[:limit]], len(rows) > limit

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        marks = ", ".join("?" for _ in statuses)
        rows = self._all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)
        return [Job(r) for r in rows]

    def claim_next(self) -> Job | None:
        """Atomically take the oldest queued job and mark it running."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?", (now(), row[0])
            )
            _event(db, row[0], "info", "Fine-tuning job started")
        return self.get_job(row[0])

    def set_worker(self, job_id: str, pid: int | None, pid_start: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ?", (pid, pid_start, job_id)
            )

    def cancel(self, job_id: str) -> bool:
        """Mark an active job cancelled; False when it had already finished."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status "
                f"IN {ACTIVE}",
                (now(), job_id),
            ).rowcount
            if changed:
                _event(db, job_id, "info", "Fine-tuning job cancelled")
        return bool(changed)

    def succeed(
        self, job_id: str, fine_tuned_model: str, result_files: list[str], trained_tokens: int
    ) -> bool:
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ?, fine_tuned_model = ?, "
                "result_files = ?, trained_tokens = ? WHERE id = ? AND status = 'running'",
                (now(), fine_tuned_model, json.dumps(result_files), trained_tokens, job_id),
            ).rowcount
            if changed:
                _event(db, job_id, "info", f"New fine-tuned model created: {fine_tuned_model}")
                _event(db, job_id, "info", "The job has successfully completed")
        return bool(changed)

    def fail(self, job_id: str, code: str, message: str, param: str | None = None) -> bool:
        """Mark a running job failed (a cancelled or finished job keeps its status)."""
        error = {"code": code, "message": message, "param": param}
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? "
                "WHERE id = ? AND status = 'running'",
                (now(), json.dumps(error), job_id),
            ).rowcount
            if changed:
                _event(db, job_id, "error", f"Fine-tuning job failed: {message}")
        return bool(changed)

    def recover_interrupted(self, resume: bool) -> list[str]:
        """Jobs left `running` by a server that stopped: failed, or queued again to resume from
        their last checkpoint. Returns their ids."""
        with self.transaction() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status = 'running'").fetchall()
            for (job_id,) in rows:
                if resume:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', resume = 1, pid = NULL WHERE id = ?",
                        (job_id,),
                    )
                    _event(
                        db,
                        job_id,
                        "warn",
                        "The server stopped while this job was running; it is queued again "
                        "and resumes from its last checkpoint",
                    )
                    continue
                message = (
                    "The server stopped while this job was running. Start the server with "
                    "--resume-interrupted to resume such jobs from their last checkpoint."
                )
                error = {"code": "server_interrupted", "message": message, "param": None}
                db.execute(
                    "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?, pid = NULL "
                    "WHERE id = ?",
                    (now(), json.dumps(error), job_id),
                )
                _event(db, job_id, "error", f"Fine-tuning job failed: {message}")
        return [r[0] for r in rows]

    # -- events and checkpoints --------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        data: dict[str, Any] | None = None,
        kind: str = "message",
    ) -> None:
        with self.transaction() as db:
            if kind == "metrics":
                # A cancelled job's worker may log a step before it is killed; reporting it
                # would put a training step after "Fine-tuning job cancelled".
                row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None and row[0] == "cancelled":
                    return
            _event(db, job_id, level, message, data, kind)

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as the OpenAI API lists them."""
        bound = "AND seq < (SELECT seq FROM events WHERE id = ?)" if after else ""
        args: tuple = (job_id, after, limit + 1) if after else (job_id, limit + 1)
        rows = self._all(
            f"SELECT * FROM events WHERE job_id = ? {bound} ORDER BY seq DESC LIMIT ?", args
        )
        return rows[:limit], len(rows) > limit

    def reported_steps(self, job_id: str) -> set[tuple[int, bool]]:
        """(step, is a training record) of every metrics event a job already has."""
        rows = self._all("SELECT data FROM events WHERE job_id = ? AND type = 'metrics'", (job_id,))
        return {(int(row["data"]["step"]), "train_loss" in row["data"]) for row in rows}

    def add_checkpoint(
        self, job_id: str, step: int, metrics: dict[str, Any], name: str, path: Path
    ) -> bool:
        with self.transaction() as db:
            changed = db.execute(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics, "
                "fine_tuned_model_checkpoint, path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt_"), job_id, now(), step, json.dumps(metrics), name, str(path)),
            ).rowcount
            if changed:
                _event(db, job_id, "info", f"Checkpoint created at step {step}", kind="message")
        return bool(changed)

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        bound = "AND seq < (SELECT seq FROM checkpoints WHERE id = ?)" if after else ""
        args: tuple = (job_id, after, limit + 1) if after else (job_id, limit + 1)
        rows = self._all(
            f"SELECT * FROM checkpoints WHERE job_id = ? {bound} ORDER BY seq DESC LIMIT ?", args
        )
        for row in rows:
            row["metrics"] = json.loads(row["metrics"])
        return rows[:limit], len(rows) > limit


def _event(
    db: sqlite3.Connection,
    job_id: str,
    level: str,
    message: str,
    data: dict[str, Any] | None = None,
    kind: str = "message",
) -> None:
    db.execute(
        "INSERT INTO events (id, job_id, created_at, level, message, data, type) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (new_id("ftevent-"), job_id, now(), level, message, json.dumps(data), kind),
    )
