"""The OpenAI fine-tuning API, served locally: files, jobs, events and checkpoints.

Objects, statuses, ids, pagination and error objects are shaped as the OpenAI API has them, so
the official `openai` client (`client.files.create`, `client.fine_tuning.jobs.create`, ...)
drives it unchanged. Requests only read and write the store (`store.py`); training happens in
worker processes (`worker.py`), never in this process. `http.Guard` checks keys and the body
limit before a route or the multipart parser reads anything. Uploaded training data is
validated with `slmforge data validate`'s checks, or, for preference pairs (OpenAI's DPO rows,
TRL's prompt/chosen/rejected), with the pair reader's; a file with errors is kept with status
`error` and its line-numbered findings, and a job that names it is refused at creation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Query, UploadFile
from fastapi.responses import HTMLResponse, Response

from slmforge import __version__
from slmforge.config.jobs import JobsServeConfig
from slmforge.config.methods import OBJECTIVES
from slmforge.errors import DataError, Finding, SlmforgeError
from slmforge.http import errors
from slmforge.http.auth import ApiKeys
from slmforge.http.errors import APIError
from slmforge.http.guard import Guard, GuardPolicy
from slmforge.http.ids import new_id
from slmforge.jobs.spec import (
    OPENAI_HYPERPARAMETERS,
    SUFFIX,
    JobRequest,
    build_config,
    model_name,
    resolve_model,
)
from slmforge.jobs.store import SUFFIXES, Job, JobStore

# the dashboard page holds no data; its API calls carry the key the user types in
OPEN_PATHS = frozenset({"/health", "/ui"})
PURPOSES = ("fine-tune", "fine-tune-results", "batch", "user_data", "evals", "assistants")
MAX_FINDINGS_SHOWN = 10


@dataclass
class JobsState:
    """What the routes share."""

    config: JobsServeConfig
    store: JobStore
    home: Path


# -- OpenAI objects ----------------------------------------------------------------------------
def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row["status_details"],
        "expires_at": None,
    }


def job_object(job: Job) -> dict[str, Any]:
    hyper = job.hyperparameters
    kind = OBJECTIVES[job.config.get("objective", "sft")].openai_type
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "org-local",
        "result_files": job.result_files,
        "status": job.status,
        "validation_file": job.validation_file,
        "training_file": job.training_file,
        "hyperparameters": {k: hyper[k] for k in OPENAI_HYPERPARAMETERS if k in hyper},
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "user_provided_suffix": job.suffix,
        "seed": job.seed,
        "estimated_finish": None,
        "integrations": [],
        "metadata": job.metadata,
        "method": {"type": kind, kind: {"hyperparameters": hyper}},
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": row["id"],
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": row["data"],
        "type": row["type"],
    }


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
        "fine_tuning_job_id": row["job_id"],
        "step_number": row["step"],
        "metrics": row["metrics"],
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# -- files -------------------------------------------------------------------------------------
def validate_upload(path: Path, filename: str) -> tuple[str, str | None, int]:
    """(status, status_details, valid examples or pairs) of an uploaded training file."""
    from slmforge.data.preference import is_preference_file
    from slmforge.data.validate import validate_files

    try:
        if is_preference_file(path):
            return _validate_pairs(path, filename)
        report, examples = validate_files([path], min_examples=1)
    except SlmforgeError as exc:
        return "error", str(exc).replace(str(path), filename), 0
    count = len(examples[str(path)])
    if report.ok and count:
        return "processed", None, count
    return "error", _details(report.errors, filename, "examples"), count


def _validate_pairs(path: Path, filename: str) -> tuple[str, str | None, int]:
    from slmforge.data.preference import read_preference_examples

    try:
        pairs = read_preference_examples(path, None)
    except DataError as exc:
        errors = [f for f in exc.findings if f.severity == "error"] or exc.findings
        return "error", _details(errors, filename, "pairs"), 0
    if not pairs:
        return "error", f"{filename}: no valid pairs", 0
    return "processed", None, len(pairs)


def _details(errors: list[Finding], filename: str, rows: str) -> str:
    """The first errors, one a line, named by the upload's file name (not the blob's path)."""
    shown = [dataclasses.replace(f, file=filename) for f in errors[:MAX_FINDINGS_SHOWN]]
    lines = [str(f) for f in shown] or [f"{filename}: no valid {rows}"]
    more = len(errors) - len(shown)
    if more > 0:
        lines.append(f"... and {more} more errors")
    return "\n".join(lines)


def _file_or_404(state: JobsState, file_id: str, param: str = "file_id") -> dict[str, Any]:
    row = state.store.get_file(file_id)
    if row is None:
        raise APIError(404, f"No such File object: {file_id}", param=param, code="not_found")
    return row


def _job_or_404(state: JobsState, job_id: str) -> Job:
    job = state.store.get_job(job_id)
    if job is None:
        raise APIError(
            404,
            f"Could not find fine-tune job: {job_id}.",
            param="fine_tuning_job_id",
            code="fine_tuning_job_not_found",
        )
    return job


def add_file_routes(router: APIRouter, state: JobsState) -> None:
    # Plain `def` handlers: FastAPI runs them in its thread pool, so SQLite and the data
    # validator never block the event loop.
    @router.post("/v1/files")
    def upload(
        file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
    ) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise APIError(
                400,
                f"Invalid value for 'purpose': {purpose!r}; expected one of {', '.join(PURPOSES)}.",
                param="purpose",
                code="invalid_value",
            )
        content = file.file.read()
        filename = Path(file.filename or "upload.jsonl").name
        suffix = SUFFIXES.get(Path(filename).suffix.lower(), ".jsonl")
        status, details, examples = "processed", None, 0
        if purpose == "fine-tune":
            _, path = state.store.put_blob(content, suffix)
            status, details, examples = validate_upload(path, filename)
        row = state.store.add_file(content, filename, purpose, suffix, status, details, examples)
        return file_object(row)

    @router.get("/v1/files")
    def list_files(purpose: str | None = None) -> dict[str, Any]:
        return page([file_object(r) for r in state.store.list_files(purpose)], False)

    @router.get("/v1/files/{file_id}")
    def get_file(file_id: str) -> dict[str, Any]:
        return file_object(_file_or_404(state, file_id))

    @router.get("/v1/files/{file_id}/content")
    def file_content(file_id: str) -> Response:
        row = _file_or_404(state, file_id)
        content = state.store.file_path(row).read_bytes()
        return Response(content, media_type="application/octet-stream")

    @router.delete("/v1/files/{file_id}")
    def delete_file(file_id: str) -> dict[str, Any]:
        _file_or_404(state, file_id)
        state.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


# -- jobs --------------------------------------------------------------------------------------
def _training_files(state: JobsState, request: JobRequest) -> dict[str, dict[str, Any]]:
    files = {}
    for param in ("training_file", "validation_file"):
        file_id = getattr(request, param)
        if file_id is None:
            continue
        row = state.store.get_file(file_id)
        if row is None:
            raise APIError(
                400,
                f"invalid {param}: {file_id} does not exist",
                param=param,
                code="invalid_file",
            )
        if row["purpose"] != "fine-tune":
            raise APIError(
                400,
                f"invalid {param}: {file_id} has purpose {row['purpose']!r}, not 'fine-tune'",
                param=param,
                code="invalid_file_purpose",
            )
        if row["status"] != "processed":
            raise APIError(
                400,
                f"invalid {param}: {file_id} has errors:\n{row['status_details']}",
                param=param,
                code=f"invalid_{param}",
            )
        files[param] = row
    return files


def create_job(state: JobsState, request: JobRequest) -> Job:
    if request.integrations:
        raise APIError(
            400, "integrations are not supported here.", param="integrations", code="invalid_value"
        )
    if request.suffix is not None and not SUFFIX.match(request.suffix):
        raise APIError(
            400,
            "suffix: use 1 to 64 letters, digits, '-' or '_'.",
            param="suffix",
            code="invalid_value",
        )
    model, base = resolve_model(request.model, state.config.model_root)
    files = _training_files(state, request)
    job_id = new_id("ftjob-")
    out = state.home / "models" / job_id
    cfg, hyper, total = build_config(
        request, job_id, model, files, state.store, out, state.config.device
    )
    return state.store.create_job(
        {
            "id": job_id,
            "model": request.model,
            "fine_tuned_model_name": model_name(base, request.suffix, job_id),
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "hyperparameters": hyper,
            "suffix": request.suffix,
            "seed": cfg.seed,
            "config": cfg.model_dump(mode="json"),
            "total_steps": total,
            "metadata": request.metadata,
        }
    )


def add_job_routes(router: APIRouter, state: JobsState) -> None:
    limit_query = Query(20, ge=1, le=100)

    @router.post("/v1/fine_tuning/jobs")
    def create(request: JobRequest) -> dict[str, Any]:
        return job_object(create_job(state, request))

    @router.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int = limit_query) -> dict[str, Any]:
        jobs, has_more = state.store.list_jobs(after, limit)
        return {"object": "list", "data": [job_object(j) for j in jobs], "has_more": has_more}

    @router.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve(job_id: str) -> dict[str, Any]:
        return job_object(_job_or_404(state, job_id))

    @router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = _job_or_404(state, job_id)
        if not state.store.cancel(job_id):
            raise APIError(
                400,
                f"Job {job_id} has already {job.status}; only active jobs can be cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        return job_object(_job_or_404(state, job_id))

    @router.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, after: str | None = None, limit: int = limit_query) -> dict:
        _job_or_404(state, job_id)
        rows, has_more = state.store.events(job_id, after, limit)
        return {"object": "list", "data": [event_object(r) for r in rows], "has_more": has_more}

    @router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(job_id: str, after: str | None = None, limit: int = limit_query) -> dict:
        _job_or_404(state, job_id)
        rows, has_more = state.store.checkpoints(job_id, after, limit)
        return page([checkpoint_object(r) for r in rows], has_more)

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ui")
    def dashboard() -> HTMLResponse:
        page = resources.files("slmforge") / "resources" / "jobs_ui" / "index.html"
        return HTMLResponse(page.read_text("utf-8"))


def create_jobs_app(
    config: JobsServeConfig, keys: ApiKeys, home: Path, pool: Any = None
) -> FastAPI:
    """The jobs API app; `pool` (a worker.WorkerPool) is started and stopped with it."""
    state = JobsState(config, JobStore(home), home)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is not None:
            pool.start()
        try:
            yield
        finally:
            if pool is not None:
                pool.stop()

    app = FastAPI(
        title="slmforge jobs",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.slmforge = state
    errors.install(app)
    app.add_middleware(Guard, policy=GuardPolicy(keys, config.max_body_bytes, OPEN_PATHS))
    router = APIRouter()
    add_file_routes(router, state)
    add_job_routes(router, state)
    app.include_router(router)
    return app
