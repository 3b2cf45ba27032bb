"""Running the jobs API: bind, recover interrupted jobs, start the workers, serve with uvicorn.

`JobsServer(config).run()` blocks (the `slmforge serve-jobs` command); `start_jobs_in_thread`
runs the same server inside this process for tests. Either way training happens only in
worker processes.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slmforge.config.jobs import JobsServeConfig
from slmforge.errors import MissingDependencyError, RunError
from slmforge.home import slmforge_home
from slmforge.progress import info, warn
from slmforge.serve.auth import ApiKeys
from slmforge.serve.server import SHUTDOWN_GRACE_S, base_url, bind


def jobs_home(config: JobsServeConfig) -> Path:
    return Path(config.home).expanduser() if config.home else slmforge_home() / "jobs"


class JobsServer:
    def __init__(self, config: JobsServeConfig) -> None:
        import uvicorn

        if importlib.util.find_spec("python_multipart") is None:  # file uploads need it
            raise MissingDependencyError("python-multipart", "serve", "slmforge serve-jobs")
        from slmforge.serve.jobs_api import create_jobs_app
        from slmforge.serve.store import JobStore
        from slmforge.serve.worker import WorkerPool

        self.config = config
        self.home = jobs_home(config)
        keys = ApiKeys.from_options(config.api_key, config.api_keys_file)
        self.socket = bind(config.host, config.port)
        self.url = base_url(self.socket)
        self.pool = WorkerPool(JobStore(self.home), config.workers, config.resume_interrupted)
        self.app = create_jobs_app(config, keys, self.home, self.pool)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level="warning",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                lifespan="on",
            )
        )

    def run(self) -> None:
        info(
            f"fine-tuning jobs API on {self.url}/v1 with {self.config.workers} workers "
            f"(dashboard: {self.url}/ui, store: {self.home})"
        )
        if self.config.host not in ("127.0.0.1", "localhost", "::1"):
            warn(f"listening on {self.config.host}: reachable from other machines")
        try:
            self._uvicorn.run(sockets=[self.socket])
        except KeyboardInterrupt:
            info("stopped")
        finally:
            self.socket.close()

    def stop(self) -> None:
        self._uvicorn.should_exit = True


@dataclass
class RunningJobsServer:
    server: JobsServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 30) -> None:
        self.server.stop()
        self.thread.join(timeout)


def start_jobs_in_thread(config: JobsServeConfig, ready_timeout_s: float = 60) -> RunningJobsServer:
    import httpx

    server = JobsServer(config)
    thread = threading.Thread(target=server.run, name="slmforge-jobs-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return RunningJobsServer(server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RunError(f"the jobs server at {server.url} was not ready within {ready_timeout_s:.0f}s")
