"""Running the jobs API: bind, recover interrupted jobs, start the workers, serve with uvicorn.

`JobsServer(config).run()` blocks (the `slmforge serve-jobs` command); `start_jobs_in_thread`
runs the same server inside this process for tests. Either way training happens only in
worker processes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from slmforge.config.jobs import JobsServeConfig
from slmforge.errors import MissingDependencyError
from slmforge.home import slmforge_home
from slmforge.http.auth import ApiKeys
from slmforge.http.binding import base_url, bind
from slmforge.http.host import RunningServer, run_in_thread, serve_on, uvicorn_server
from slmforge.progress import info


def jobs_home(config: JobsServeConfig) -> Path:
    return Path(config.home).expanduser() if config.home else slmforge_home() / "jobs"


class JobsServer:
    def __init__(self, config: JobsServeConfig) -> None:
        if importlib.util.find_spec("python_multipart") is None:  # file uploads need it
            raise MissingDependencyError("python-multipart", "serve", "slmforge serve-jobs")
        from slmforge.jobs.api import create_jobs_app
        from slmforge.jobs.store import JobStore
        from slmforge.jobs.worker import WorkerPool

        self.config = config
        self.home = jobs_home(config)
        keys = ApiKeys.from_options(config.api_key, config.api_keys_file)
        self.socket = bind(config.host, config.port)
        self.url = base_url(self.socket)
        self.pool = WorkerPool(JobStore(self.home), config.workers, config.resume_interrupted)
        self.app = create_jobs_app(config, keys, self.home, self.pool)
        self._uvicorn = uvicorn_server(self.app)

    def run(self) -> None:
        info(
            f"fine-tuning jobs API on {self.url}/v1 with {self.config.workers} workers "
            f"(dashboard: {self.url}/ui, store: {self.home})"
        )
        serve_on(self._uvicorn, self.socket, self.config.host)

    def stop(self) -> None:
        self._uvicorn.should_exit = True


def start_jobs_in_thread(config: JobsServeConfig, ready_timeout_s: float = 60) -> RunningServer:
    """The jobs server in a thread of this process (tests), once its /health answers."""
    return run_in_thread(JobsServer(config), ready_timeout_s, "slmforge-jobs-serve")
