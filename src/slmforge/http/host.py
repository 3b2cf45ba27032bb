"""Hosting an ASGI app with uvicorn on a bound socket, in the foreground or in a thread.

The servers (`slmforge serve`, `serve-jobs`, `app`) all run this way: `uvicorn_server` leaves
process-wide logging alone, `serve_on` blocks until stopped or Ctrl-C, and `run_in_thread`
starts a server object in this process (tests, the app, benchmarks) once its /health answers.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from slmforge.errors import RunError
from slmforge.http.binding import LOCAL_HOSTS
from slmforge.progress import info, warn

SHUTDOWN_GRACE_S = 5


class HostedServer(Protocol):
    """What `run_in_thread` drives: a server with a URL that `run()`s until `stop()`."""

    url: str

    def run(self) -> None: ...

    def stop(self) -> None: ...


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
    if host not in LOCAL_HOSTS:
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

    server: HostedServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 30) -> None:
        self.server.stop()
        self.thread.join(timeout)


def run_in_thread(server: HostedServer, ready_timeout_s: float, name: str) -> RunningServer:
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
