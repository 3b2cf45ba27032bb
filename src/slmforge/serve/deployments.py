"""Deployments: named `slmforge serve` processes that outlive the CLI, recorded in SQLite.

A deployment is the local counterpart of the workshop's cloud endpoint. `create` starts a
server in its own session (so it survives the terminal), waits until it answers, and records
it in `<slmforge home>/deployments/registry.db` (WAL mode, one transaction per change). Its API
key is generated, shown once, and kept only as a SHA-256 line in the deployment's keys file.
Health is never taken from the registry alone: `status` checks the process (pid plus its start
time, so a reused pid is not mistaken for ours) and asks `/health`.

`deploy:NAME[:ADAPTER]` engine specs come from here: `DEPLOY_SCHEME` is declared as an entry
point of the `slmforge.engine_specs` group (pyproject.toml), so the resolver in `runtime` finds
it without importing `serve`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from slmforge.artifacts import atomic_file
from slmforge.config import parse_adapter_options
from slmforge.errors import InputError, RunError
from slmforge.home import slmforge_home
from slmforge.http.auth import hashed_line
from slmforge.http.binding import free_port
from slmforge.processes import process_start
from slmforge.runtime.schemes import EngineSpec, Scheme
from slmforge.runtime.specs import DEPLOYMENT_KEY_ENV
from slmforge.serve.models import resolve_engine

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
READY_TIMEOUT_S = 600
STOP_TIMEOUT_S = 15
POLICY_FILE = "safety.yaml"  # the content filter policy a deployment serves with, if any
ROUTE_FILE = "route.json"  # the routing (policy, cloud spec) a deployment serves with, if any
SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    adapters TEXT NOT NULL,
    engine TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    pid INTEGER,
    started TEXT,
    created REAL NOT NULL
)
"""


@dataclass
class Deployment:
    name: str
    model: str
    adapters: list[str]
    engine: str
    host: str
    port: int
    pid: int | None
    started: str | None  # processes.process_start: tells our pid from a reused one
    created: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@dataclass
class DeploymentStatus:
    deployment: Deployment
    state: str  # "up", "loading", "down"
    detail: str = ""


def root() -> Path:
    return slmforge_home() / "deployments"


@contextmanager
def registry() -> Iterator[sqlite3.Connection]:
    root().mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(root() / "registry.db", timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(SCHEMA)
        with db:  # one transaction
            yield db


def _row(values: tuple) -> Deployment:
    name, model, adapters, engine, host, port, pid, started, created = values
    return Deployment(name, model, json.loads(adapters), engine, host, port, pid, started, created)


def get(name: str) -> Deployment:
    with registry() as db:
        row = db.execute("SELECT * FROM deployments WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = ", ".join(d.name for d in all_deployments()) or "none"
        raise InputError(f"no deployment named {name!r} (deployments: {known})")
    return _row(row)


def all_deployments() -> list[Deployment]:
    with registry() as db:
        rows = db.execute("SELECT * FROM deployments ORDER BY created").fetchall()
    return [_row(r) for r in rows]


def _save(deployment: Deployment) -> None:
    values = asdict(deployment) | {"adapters": json.dumps(deployment.adapters)}
    with registry() as db:
        db.execute(
            "INSERT OR REPLACE INTO deployments VALUES "
            "(:name, :model, :adapters, :engine, :host, :port, :pid, :started, :created)",
            values,
        )


def alive(deployment: Deployment) -> bool:
    if deployment.pid is None:
        return False
    return process_start(deployment.pid) == deployment.started


def status(deployment: Deployment) -> DeploymentStatus:
    if not alive(deployment):
        return DeploymentStatus(deployment, "down", "process not running")
    try:
        response = httpx.get(f"http://{deployment.host}:{deployment.port}/health", timeout=2)
    except httpx.TransportError as exc:
        return DeploymentStatus(deployment, "down", f"no answer: {type(exc).__name__}")
    if response.status_code == 200:
        return DeploymentStatus(deployment, "up")
    body = response.json() if response.headers.get("content-type", "").startswith("app") else {}
    state = "loading" if body.get("status") == "loading" else "down"
    return DeploymentStatus(deployment, state, body.get("error") or "")


def folder(name: str) -> Path:
    return root() / name


def log_path(name: str) -> Path:
    return folder(name) / "server.log"


def _launch(deployment: Deployment) -> Deployment:
    """Start the server process in its own session, logging to the deployment's folder."""
    command = [
        sys.executable,
        "-m",
        "slmforge",
        "--log-format",
        "plain",
        "serve",
        deployment.model,
        "--host",
        deployment.host,
        "--port",
        str(deployment.port),
        "--api-keys-file",
        str(folder(deployment.name) / "keys"),
        "--served-model-name",
        deployment.name,
    ]
    for adapter in deployment.adapters:
        command += ["--adapter", adapter]
    if deployment.engine != "auto":
        command += ["--engine", deployment.engine]
    policy = folder(deployment.name) / POLICY_FILE
    if policy.is_file():
        command += ["--safety", str(policy)]
    command += route_options(route_of(deployment.name))
    with open(log_path(deployment.name), "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deployment.pid = process.pid
    deployment.started = process_start(process.pid)
    _save(deployment)
    return deployment


def wait_ready(deployment: Deployment, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = status(deployment)
        if current.state == "up":
            return
        if not alive(deployment):
            raise RunError(
                f"deployment {deployment.name} exited while starting; last log lines:\n"
                + "\n".join(tail(deployment.name, 8))
            )
        time.sleep(0.2)
    raise RunError(f"deployment {deployment.name} was not ready within {timeout_s:.0f}s")


def create(
    name: str,
    model: str,
    adapters: list[str] | None = None,
    engine: str = "auto",
    host: str = "127.0.0.1",
    port: int = 0,
    safety: Path | None = None,
    route: dict[str, str] | None = None,
) -> tuple[Deployment, str]:
    """Start a deployment; returns it and its API key (the only time the key is shown).
    A safety policy is checked here and copied into the deployment's folder, so a restart
    filters with the same policy; so is the routing (`route`: serve's route, cloud,
    cloud_key_env and cloud_api_version; the cloud's key itself stays in the environment)."""
    if not NAME_PATTERN.match(name):
        raise InputError(
            f"deployment name {name!r}: use lowercase letters, digits and '-' (at most 63)"
        )
    adapters = list(adapters or [])
    resolve_engine(model, engine, parse_adapter_options(adapters))  # type: ignore[arg-type]
    if safety is not None:  # a bad policy fails here, not in the background process
        from slmforge.safety.filter import SafetyFilter

        SafetyFilter.from_file(safety)
    if route:
        check_route(model, route)
    if any(d.name == name for d in all_deployments()):
        raise InputError(f"deployment {name!r} exists; delete it first or pick another name")
    folder(name).mkdir(parents=True, exist_ok=True)
    if safety is not None:
        shutil.copyfile(safety, folder(name) / POLICY_FILE)
    if route:
        (folder(name) / ROUTE_FILE).write_text(json.dumps(route, indent=2) + "\n", "utf-8")
    key = "sk-slmforge-" + secrets.token_urlsafe(24)
    keys = folder(name) / "keys"
    keys.write_text(hashed_line(key) + "\n", encoding="utf-8")
    keys.chmod(0o600)
    model_path = str(Path(model).resolve()) if Path(model).exists() else model
    deployment = Deployment(
        name, model_path, adapters, engine, host, port or free_port(host), None, None, time.time()
    )
    _launch(deployment)
    try:
        wait_ready(deployment)
    except RunError:
        stop(deployment)
        raise
    return deployment, key


def create_with_key_file(
    name: str,
    model: str,
    adapters: list[str],
    engine: str,
    host: str,
    port: int,
    key_file: Path,
    force: bool = False,
) -> Deployment:
    """`create`, with the API key written to `key_file` (mode 600) instead of shown: what a
    workflow's deploy stage does. `force` replaces a deployment of this name and the file; a
    deployment whose key could not be written is deleted again (no one could call it)."""
    if force and any(d.name == name for d in all_deployments()):
        delete(name)
    deployment, key = create(name, model, adapters, engine, host, port)
    try:
        with atomic_file(key_file, force=force) as temp:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(key + "\n")
    except BaseException:
        delete(name)
        raise
    return deployment


def check_route(model: str, route: dict[str, str]) -> None:
    """The same checks `slmforge serve --route` makes, before any process starts."""
    from slmforge.config import validate
    from slmforge.config.serve import ServeConfig

    validate(ServeConfig, {"model": model, **route}, option_keys=set(route))


def route_of(name: str) -> dict[str, str]:
    path = folder(name) / ROUTE_FILE
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def route_options(route: dict[str, str]) -> list[str]:
    """`slmforge serve` options for a deployment's routing."""
    options: list[str] = []
    for field, value in route.items():
        options += ["--" + field.replace("_", "-"), str(value)]
    return options


def restart(name: str) -> Deployment:
    deployment = get(name)
    stop(deployment)
    _launch(deployment)
    wait_ready(deployment)
    return deployment


def stop(deployment: Deployment) -> None:
    """Stop the server process group: SIGTERM, then SIGKILL after a grace period."""
    if not alive(deployment):
        return
    os.killpg(deployment.pid, signal.SIGTERM)  # type: ignore[arg-type]
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive(deployment) and time.monotonic() < deadline:
        _reap(deployment.pid)
        time.sleep(0.1)
    if alive(deployment):
        os.killpg(deployment.pid, signal.SIGKILL)  # type: ignore[arg-type]
    _reap(deployment.pid)


def _reap(pid: int | None) -> None:
    """Collect our own exited child, so it does not linger as a zombie that looks alive."""
    with suppress(ChildProcessError):
        if pid is not None:
            os.waitpid(pid, os.WNOHANG)


def delete(name: str) -> None:
    deployment = get(name)
    stop(deployment)
    with registry() as db:
        db.execute("DELETE FROM deployments WHERE name = ?", (name,))
    for path in sorted(folder(name).glob("*")):
        path.unlink()
    folder(name).rmdir()


def tail(name: str, lines: int = 50) -> list[str]:
    path = log_path(name)
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


@dataclass
class ProbeResult:
    prompt: str
    answer: str
    latency_s: float
    error: str | None = None


def probe(
    deployment: Deployment,
    conversations: list[list[dict[str, str]]],
    api_key: str,
    max_tokens: int = 64,
) -> Iterator[ProbeResult]:
    """Send each conversation to the deployment (as any client would) and report each answer."""
    from slmforge.runtime.engine import GenParams, complete
    from slmforge.runtime.remote import RemoteEngine

    engine = RemoteEngine(
        deployment.name, deployment.url, api_key=api_key, timeout_s=120, max_retries=1
    )
    params = GenParams(max_tokens=max_tokens)
    for messages in conversations:
        prompt = messages[-1]["content"]
        started = time.perf_counter()
        try:
            answer = complete(engine, messages, params).text
            yield ProbeResult(prompt, answer, time.perf_counter() - started)
        except Exception as exc:
            yield ProbeResult(prompt, "", time.perf_counter() - started, str(exc))


# -- deploy:NAME[:ADAPTER] engine specs ----------------------------------------------------------
def _parse_spec(spec: str, rest: str) -> EngineSpec:
    """`NAME` (the base model) or `NAME:ADAPTER` of a deployment in the local registry."""
    name, _, adapter = rest.partition(":")
    if not name.strip():
        raise InputError(f"engine spec {spec!r} names no deployment; e.g. deploy:travel-bot")
    deployment = get(name.strip())
    model = adapter.strip() or deployment.name
    return EngineSpec(
        kind="openai", model=model, base_url=deployment.url, key_env=DEPLOYMENT_KEY_ENV
    )


DEPLOY_SCHEME = Scheme("deploy", "deploy:NAME", _parse_spec)
