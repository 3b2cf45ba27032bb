"""Running the server: bind first, load the model in the background, serve with uvicorn.

The socket is bound before anything else, so a port in use is a clear error (uvicorn would
exit the process), `--port 0` works, and health checks answer 503 while a large model loads.
`start_in_thread` runs the same server inside this process (tests, the app, benchmarks).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from slmforge.config import parse_adapter_options
from slmforge.config.serve import ServeConfig
from slmforge.errors import InputError, RunError
from slmforge.progress import info, warn
from slmforge.serve.auth import ApiKeys
from slmforge.serve.models import ServedModel, load_served, resolve_engine

SHUTDOWN_GRACE_S = 5


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def uvicorn_server(app: Any) -> Any:
    """A uvicorn server for `app` that leaves process-wide logging alone."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            # uvicorn's own config would reset process-wide logging (and with it
            # handlers other libraries hold); its warnings reach stderr without it
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            lifespan="on",
        )
    )


def serve_on(server: Any, sock: socket.socket, host: str) -> None:
    """Serve until stopped or Ctrl-C (uvicorn re-raises it after its graceful shutdown)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {host}: reachable from other machines")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        info("stopped")
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A server running in a thread of this process (tests, the app, benchmarks)."""

    server: Any  # has .url, .stop() and .run()
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 30) -> None:
        self.server.stop()
        self.thread.join(timeout)


def run_in_thread(server: Any, ready_timeout_s: float, name: str) -> RunningServer:
    """Start `server.run()` in a thread and wait until its /health answers 200."""
    import httpx

    errors: list[BaseException] = []

    def target() -> None:
        try:
            server.run()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if errors:
            raise errors[0]
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return RunningServer(server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RunError(f"the server at {server.url} was not ready within {ready_timeout_s:.0f}s")


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
            from slmforge.app.server import check_spec, cloud_engine

            self.cloud = cloud_engine(check_spec("cloud", config.cloud), config)
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
