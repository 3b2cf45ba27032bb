"""The one resolver: engine specs as users type them, and the engines they name.

```
openai:MODEL@BASE_URL     any OpenAI-compatible endpoint (openai:travel@http://127.0.0.1:8000/v1)
openai:MODEL              base URL from OPENAI_BASE_URL, else the OpenAI API
openai:DEPLOYMENT@https://RESOURCE.openai.azure.com
                          Azure OpenAI: the api-version from the caller's option, else
                          $OPENAI_API_VERSION; the key from $AZURE_OPENAI_API_KEY by default
profile:NAME[:MODEL]      a cloud profile (`slmforge profile add`): its URL, model and key
deploy:NAME[:ADAPTER]     a local deployment (`slmforge deploy create`); key from
                          $SLMFORGE_API_KEY
PATH_OR_HUB_ID            a local model folder or hub id (see `runtime/local_models.py`)
PATH+ADAPTER              a base model plus one adapter, selected for every request
```

Every entry point (chat, eval, app, serve --route, data synth, tune, safety) goes through
`parse_engine_spec` / `checked_spec` / `load_engine`, so a spec means the same everywhere.
`SCHEME:` prefixes other than `openai:` come from a registry (`register_scheme`): `profile:` is
built in (`runtime/profile_scheme.py`, over the profile store below `runtime`); packages above
`runtime` add theirs through the `slmforge.engine_specs` entry point group (`deploy:` from
`serve.deployments`), loaded the first time an unknown scheme is met, so `runtime` never imports
a higher layer and a spec works whatever was imported first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from slmforge.config.endpoints import OPENAI_DEFAULT_BASE_URL, check_base_url
from slmforge.errors import InputError
from slmforge.runtime.engine import Engine
from slmforge.runtime.local_models import DEFAULT_ADAPTER, AdapterSelected, load_local, plan_local
from slmforge.runtime.profile_scheme import PROFILE_SCHEME
from slmforge.runtime.schemes import (
    EngineSpec,
    RemoteOptions,
    Scheme,
    register_scheme,
    remote_forms,
    scheme,
)

__all__ = [
    "DEFAULT_ADAPTER",
    "DEPLOYMENT_KEY_ENV",
    "OPENAI_DEFAULT_BASE_URL",
    "AdapterSelected",
    "EngineSpec",
    "RemoteOptions",
    "Scheme",
    "check_base_url",
    "checked_spec",
    "is_remote",
    "load_engine",
    "parse_engine_spec",
    "register_scheme",
]

DEPLOYMENT_KEY_ENV = "SLMFORGE_API_KEY"  # the key slmforge's own servers are called with
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]+):")

register_scheme(PROFILE_SCHEME)


def _forms() -> str:
    forms = remote_forms()
    return f"use {forms[0]}, openai:MODEL, {', '.join(forms[1:])}, a model folder or hub id, " + (
        "or PATH+ADAPTER_DIR"
    )


def parse_engine_spec(spec: str, env: Mapping[str, str] | None = None) -> EngineSpec:
    """Parse what a user typed; `env` (default `os.environ`) supplies OPENAI_BASE_URL."""
    env = os.environ if env is None else env
    text = spec.strip()
    if not text:
        raise InputError(f"empty engine spec; {_forms()}")
    if text.startswith("openai:"):
        return _parse_openai(spec, text.removeprefix("openai:"), env)
    prefix = _SCHEME.match(text)
    registered = scheme(prefix.group(1)) if prefix else None
    if registered is not None:
        parsed = registered.parse(spec, text[prefix.end() :])  # type: ignore[union-attr]
        return replace(parsed, scheme=registered.name)
    if Path(text).exists():
        return EngineSpec(kind="local", model=text)
    if prefix and prefix.group(1) in ("http", "https"):
        raise InputError(f"engine spec {spec!r} is a URL; did you mean openai:MODEL@{text}?")
    if prefix:
        raise InputError(f"unknown engine kind {prefix.group(1)!r} in {spec!r}; {_forms()}")
    return _parse_local(spec, text)


def _parse_openai(spec: str, rest: str, env: Mapping[str, str]) -> EngineSpec:
    model, at, url = rest.partition("@")
    model = model.strip()
    if not model:
        raise InputError(f"engine spec {spec!r} names no model; e.g. openai:gpt-4o-mini")
    if not at:
        url = env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    url = check_base_url(url, f"engine spec {spec!r}", "openai:travel@http://127.0.0.1:8000/v1")
    return EngineSpec(kind="openai", model=model, base_url=url)


def _parse_local(spec: str, text: str) -> EngineSpec:
    if "+" not in text:
        return EngineSpec(kind="local", model=text)
    # the whole spec was not an existing path, so the last "+" separates base and adapter
    base, _, adapter = text.rpartition("+")
    if not base.strip() or not adapter.strip():
        raise InputError(f"engine spec {spec!r}: expected PATH+ADAPTER_DIR with both parts")
    return EngineSpec(kind="local", model=base.strip(), adapter=adapter.strip())


def is_remote(spec: str | EngineSpec) -> bool:
    """Whether a spec names an endpoint (anything but a local model)."""
    parsed = parse_engine_spec(spec) if isinstance(spec, str) else spec
    return parsed.kind != "local"


def checked_spec(spec: str, label: str | None = None, *, hub: bool = True) -> EngineSpec:
    """Parse a spec and check what can be checked before loading anything (a local spec's
    folders, engine and adapters); errors start with `label: ` (`--local`, `target base`).
    With `hub=False` a local spec must be an existing folder (no downloads)."""
    try:
        parsed = parse_engine_spec(spec)
        if parsed.kind == "local":
            if not hub and not Path(parsed.model).is_dir():
                raise InputError(
                    f"no such folder: {parsed.model}; give an ONNX folder (slmforge optimize), "
                    f"a model or adapter folder, or {_or_list(remote_forms())}"
                )
            plan_local(parsed.model, parsed.adapter)
    except InputError as exc:
        if label is None:
            raise
        raise InputError(f"{label}: {exc}") from None
    return parsed


def _or_list(items: list[str]) -> str:
    return f"{', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else "".join(items)


AZURE_HOST_SUFFIXES = (
    ".openai.azure.com",
    ".cognitiveservices.azure.com",
    ".services.ai.azure.com",
)
AZURE_KEY_ENV = "AZURE_OPENAI_API_KEY"
API_VERSION_ENV = "OPENAI_API_VERSION"  # the variable the openai package's Azure client reads


def is_azure_url(base_url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(base_url).hostname or "").endswith(AZURE_HOST_SUFFIXES)


def azure_api_version(base_url: str, api_version: str | None) -> str | None:
    """The api-version to talk Azure OpenAI with: the option, else $OPENAI_API_VERSION for an
    Azure resource endpoint. None means the plain OpenAI API (other endpoints, and Azure's
    `/openai/v1` API, which needs no api-version)."""
    if api_version or not is_azure_url(base_url) or "/openai/v1" in base_url:
        return api_version or None
    return os.environ.get(API_VERSION_ENV, "").strip() or None


def default_key_env(spec: EngineSpec) -> str:
    """Where the key of an openai: spec comes from when the caller names no variable."""
    if spec.key_env:
        return spec.key_env
    if spec.base_url and is_azure_url(spec.base_url) and not os.environ.get("OPENAI_API_KEY"):
        return AZURE_KEY_ENV
    return "OPENAI_API_KEY"


def load_engine(
    spec: str | EngineSpec,
    *,
    api_key: str | None = None,
    api_key_env: str | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 5,
    api_version: str | None = None,
    **local_options: Any,
) -> Engine:
    """Build the engine a spec names. Remote options apply to remote specs (a profile brings
    its own key and api-version); the key comes from `api_key`, else the spec's own variable
    (deploy:), else `api_key_env`, else `default_key_env`; `api_version` (or
    $OPENAI_API_VERSION for an Azure endpoint) makes an openai: spec talk Azure OpenAI;
    `local_options` go to `TorchEngine` for local models."""
    parsed = parse_engine_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "local":
        return load_local(plan_local(parsed.model, parsed.adapter), **local_options)
    remote = RemoteOptions(api_key, api_key_env, timeout_s, max_retries, api_version)
    registered = scheme(parsed.scheme) if parsed.scheme else None
    if registered is None and parsed.profile is not None:  # an EngineSpec built by hand
        registered = scheme("profile")
    if registered is not None and registered.build is not None:
        return registered.build(parsed, remote)
    return openai_engine(parsed, remote)


def openai_engine(parsed: EngineSpec, remote: RemoteOptions) -> Engine:
    """An OpenAI client for a spec's URL and model."""
    from slmforge.runtime.remote import RemoteEngine

    base_url = parsed.base_url or OPENAI_DEFAULT_BASE_URL
    return RemoteEngine(
        parsed.model,
        base_url,
        api_key=remote.api_key,
        api_key_env=parsed.key_env or remote.api_key_env or default_key_env(parsed),
        timeout_s=remote.timeout_s,
        max_retries=remote.max_retries,
        api_version=azure_api_version(base_url, remote.api_version),
    )
