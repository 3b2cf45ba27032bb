"""The slmforge home folder: per-user state that outlives one run (cloud profiles, deployments).

`SLMFORGE_HOME` names it; the default is `~/.slmforge`. Nothing is created until a command
writes there, so read-only commands never leave folders behind.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SLMFORGE_HOME"


def slmforge_home() -> Path:
    """The home folder (not created): `$SLMFORGE_HOME`, else `~/.slmforge`."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".slmforge"
