"""The registry of engine spec schemes (`NAME:...`) and the shapes a spec parses into.

`openai:` is built into the parser (`runtime/specs.py`); `profile:` is registered by
`runtime/profile_scheme.py`; packages above `runtime` declare theirs as entry points in the
`slmforge.engine_specs` group (`deploy = "slmforge.serve.deployments:DEPLOY_SCHEME"` in
pyproject.toml), loaded the first time a spec names a scheme not registered yet. So `runtime`
imports no higher layer, and a spec resolves the same whatever the caller imported first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Literal

from slmforge.runtime.engine import Engine

ENTRY_POINT_GROUP = "slmforge.engine_specs"


@dataclass(frozen=True)
class EngineSpec:
    """A parsed spec: `kind` "openai" (model + base_url, and the cloud `profile` that gave
    them, if any) or "local" (model path + adapter). `scheme` names the registered scheme that
    builds the engine (None: the plain OpenAI client)."""

    kind: Literal["openai", "local"]
    model: str
    base_url: str | None = None
    adapter: str | None = None
    profile: str | None = None
    key_env: str | None = None  # where the key comes from when the spec implies one
    scheme: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RemoteOptions:
    """What the caller says about remote engines; a scheme may ignore what it brings itself
    (a profile has its own key and api-version)."""

    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    api_version: str | None = None


@dataclass(frozen=True)
class Scheme:
    """A `NAME:` spec prefix: `parse(spec, rest)` turns what follows the colon into an
    EngineSpec; `build` makes its engine (None: an OpenAI client for the spec's URL and key).
    `form` is how help and errors show it (`deploy:NAME`)."""

    name: str
    form: str
    parse: Callable[[str, str], EngineSpec]
    build: Callable[[EngineSpec, RemoteOptions], Engine] | None = None


_SCHEMES: dict[str, Scheme] = {}
_discovered = False


def register_scheme(scheme: Scheme) -> None:
    """Add (or replace) a spec scheme; `openai` is built into the parser."""
    _SCHEMES[scheme.name] = scheme


def _discover() -> None:
    """Load the schemes packages above `runtime` declare as entry points (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if point.name not in _SCHEMES:
            register_scheme(point.load())


def scheme(name: str) -> Scheme | None:
    """The registered scheme `name`, looking at entry points if it is not registered yet."""
    if name not in _SCHEMES:
        _discover()
    return _SCHEMES.get(name)


def remote_forms() -> list[str]:
    """The remote spec forms, for help and error messages."""
    _discover()
    return ["openai:MODEL@BASE_URL", *(s.form for s in _SCHEMES.values())]
