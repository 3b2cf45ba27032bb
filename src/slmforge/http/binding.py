"""Sockets bound before anything else starts, and free ports.

Binding first makes a port in use a clear one-line error (uvicorn would exit the process),
lets `--port 0` pick a port whose URL is known before serving, and lets a server answer
health checks while a large model is still loading.
"""

from __future__ import annotations

import socket
from contextlib import closing

from slmforge.errors import InputError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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


def free_port(host: str) -> int:
    """A port nothing listens on now, for a server another process will bind."""
    with closing(socket.socket()) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
