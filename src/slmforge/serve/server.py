"""Running the server: bind first, load the model in the background, serve with uvicorn.

The socket is bound before anything else (`http.binding`), so a port in use is a clear error,
`--port 0` works, and health checks answer 503 while a large model loads. `start_in_thread`
runs the same server inside this process (tests, the app, benchmarks).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from slmforge.config import parse_adapter_options
from slmforge.config.serve import ServeConfig
from slmforge.errors import InputError, RunError
from slmforge.http.auth import ApiKeys
from slmforge.http.binding import base_url, bind
from slmforge.http.host import RunningServer, run_in_thread, serve_on, uvicorn_server
from slmforge.progress import info
from slmforge.runtime.specs import checked_spec, load_engine
from slmforge.serve.models import ServedModel, load_served, resolve_engine


class Server:
    """One server: `run()` blocks until it is stopped; `stop()` ends it from another thread."""

    def __init__(
        self, config: ServeConfig, served: ServedModel | None = None, content_filter: Any = None
    ) -> None:
        from slmforge.serve.app import create_app

        self.config = config
        self.adapters = parse_adapter_options(config.adapter)
        if served is None:
            resolve_engine(config.model, config.engine, self.adapters)  # fail before binding
        self.cloud = None  # serve --route: made before binding (a bad spec, a missing key)
        if config.cloud is not None:
            self.cloud = load_engine(
                checked_spec(config.cloud, "--cloud", hub=False),
                api_key_env=config.cloud_key_env,
                api_version=config.cloud_api_version,
            )
        keys = ApiKeys.from_options(config.api_key, config.api_keys_file)
        self.app = create_app(config, keys, served, content_filter)
        self.state = self.app.state.slmforge
        self.socket = bind(config.host, config.port)
        self.url = base_url(self.socket)
        self._uvicorn = uvicorn_server(self.app)
        if served is not None:
            self._route(served)

    def _route(self, served: ServedModel) -> None:
        if self.cloud is not None:
            from slmforge.serve.routed import build_router

            self.state.router = build_router(self.state, served.engine, self.cloud)

    def load(self) -> None:
        """Load the model (unless given); a failure stops the server and is raised by run()."""
        if self.state.served is not None:
            return
        started = time.perf_counter()
        try:
            served = load_served(
                self.config.model,
                self.adapters,
                self.config.engine,
                self.config.served_model_name,
                self.config.allow_pickle,
                self.config.device,
                self.config.max_concurrency,
                self.config.prefix_cache_mib,
            )
        except Exception as exc:
            self.state.load_error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            self._load_exception = exc
            self._uvicorn.should_exit = True
            return
        self._route(served)  # routing is ready before the model is announced
        self.state.served = served
        names = ", ".join(served.model_ids())
        info(f"loaded {names} in {time.perf_counter() - started:.1f}s")
        if self.cloud is not None:
            info(f"routing chat requests ({self.config.route}) with cloud {self.cloud.name}")

    def run(self) -> None:
        self._load_exception: BaseException | None = None
        loader = threading.Thread(target=self.load, name="slmforge-load", daemon=True)
        loader.start()
        info(f"serving on {self.url}/v1 (health: {self.url}/health)")
        serve_on(self._uvicorn, self.socket, self.config.host)
        loader.join(timeout=1)
        if self._load_exception is not None:
            exc = self._load_exception
            if isinstance(exc, InputError | RunError):
                raise exc
            raise RunError(f"cannot load {self.config.model}: {self.state.load_error}") from exc

    def stop(self) -> None:
        self._uvicorn.should_exit = True


def start_in_thread(
    config: ServeConfig,
    served: ServedModel | None = None,
    content_filter: Any = None,
    ready_timeout_s: float = 300,
) -> RunningServer:
    """Start a server in a thread of this process and wait until it answers with a model."""
    server = Server(config, served, content_filter)
    return run_in_thread(server, ready_timeout_s, "slmforge-serve")
