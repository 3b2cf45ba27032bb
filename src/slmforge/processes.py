"""Telling a process we started from a later one that reuses its pid.

A pid alone is not an identity: after a process exits the system may give its pid to another.
Records that name a process (deployments, job workers, tune trials) keep its start time too,
and a process counts as theirs only while both match.
"""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def process_start(pid: int) -> str | None:
    """When process `pid` started, as an opaque string to store and compare; None when there is
    no such process or it has exited (a zombie is not running, though its pid is taken)."""
    if _PROC.is_dir():
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        return None if fields[0] == "Z" else fields[19]  # field 22: start time in clock ticks
    return _psutil_start(pid)


def _psutil_start(pid: int) -> str | None:
    """Without /proc (macOS, Windows) psutil knows, where it is installed."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return repr(process.create_time())
    except psutil.Error:
        return None
