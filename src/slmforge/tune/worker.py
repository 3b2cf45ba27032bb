"""A worker process of `slmforge tune --parallel K`: joins the study and runs trials.

`python -m slmforge.tune.worker STORAGE_URL INDEX [DEADLINE]`; everything else it needs is in
the study. It dies with the `slmforge tune` process that started it (Linux parent-death signal).
"""

from __future__ import annotations

import ctypes
import signal
import sys

from slmforge.errors import SlmforgeError

PR_SET_PDEATHSIG = 1


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: workers then outlive a killed parent
        return None


# Looked up here, not in the forked child, where loading a library could deadlock.
_PRCTL = _libc_prctl()


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this process when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> int:
    from slmforge.tune.study import load_study, run_trials, space_of

    url, index = argv[0], int(argv[1])
    deadline = float(argv[2]) if len(argv) > 2 and argv[2] else None
    try:
        study, _ = load_study(url)
        run_trials(url, space_of(study), salt=1000 * index, deadline=deadline)
    except SlmforgeError as err:
        print(f"error: tune worker {index}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
