"""Engine specs as users type them, and the engines they name.

```
openai:MODEL@BASE_URL     any OpenAI-compatible endpoint (openai:travel@http://127.0.0.1:8000/v1)
openai:MODEL              base URL from OPENAI_BASE_URL, else the OpenAI API
openai:DEPLOYMENT@https://RESOURCE.openai.azure.com
                          Azure OpenAI: the api-version from the caller's option, else
                          $OPENAI_API_VERSION; the key from $AZURE_OPENAI_API_KEY by default
profile:NAME[:MODEL]      a cloud profile (`slmforge profile add`): its URL, model and key
deploy:NAME[:ADAPTER]     a local deployment (`slmforge deploy create`); key from
                          $SLMFORGE_API_KEY
PATH_OR_HUB_ID            a local model folder or hub id, run with PyTorch
PATH+ADAPTER_DIR          a base model plus one LoRA adapter, selected for every request
```
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slmforge.errors import InputError
from slmforge.runtime.engine import Engine, GenParams, Message

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_ADAPTER = "default"
_FORMS = (
    "use openai:MODEL@BASE_URL, openai:MODEL, profile:NAME, deploy:NAME, a model folder or "
    "hub id, "
    "or PATH+ADAPTER_DIR"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]+):")


@dataclass(frozen=True)
class EngineSpec:
    """A parsed spec: `kind` "openai" (model + base_url, and the cloud `profile` that gave
    them, if any) or "local" (model path + adapter)."""

    kind: Literal["openai", "local"]
    model: str
    base_url: str | None = None
    adapter: str | None = None
    profile: str | None = None
    key_env: str | None = None  # where the key comes from when the spec implies one


def check_base_url(url: str, label: str, example: str = OPENAI_DEFAULT_BASE_URL) -> str:
    """`url` without a trailing slash, or an InputError saying what a base URL looks like."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url) or any(c.isspace() for c in url):
        raise InputError(
            f"{label}: base URL {url!r} must start with http:// or https://, e.g. {example}"
        )
    return url


def parse_engine_spec(spec: str, env: Mapping[str, str] | None = None) -> EngineSpec:
    """Parse what a user typed; `env` (default `os.environ`) supplies OPENAI_BASE_URL."""
    env = os.environ if env is None else env
    text = spec.strip()
    if not text:
        raise InputError(f"empty engine spec; {_FORMS}")
    if text.startswith("openai:"):
        return _parse_openai(spec, text.removeprefix("openai:"), env)
    if text.startswith("profile:"):
        return _parse_profile(text.removeprefix("profile:"))
    if text.startswith("deploy:"):
        return _parse_deployment(spec, text.removeprefix("deploy:"))
    if Path(text).exists():
        return EngineSpec(kind="local", model=text)
    scheme = _SCHEME.match(text)
    if scheme and scheme.group(1) in ("http", "https"):
        raise InputError(f"engine spec {spec!r} is a URL; did you mean openai:MODEL@{text}?")
    if scheme:
        raise InputError(f"unknown engine kind {scheme.group(1)!r} in {spec!r}; {_FORMS}")
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


def _parse_profile(rest: str) -> EngineSpec:
    """`NAME` or `NAME:MODEL` (profile names have no colon; model names may)."""
    from slmforge.profiles import get_profile

    name, _, model = rest.partition(":")
    profile = get_profile(name.strip())
    model = model.strip() or profile.request_model
    return EngineSpec(kind="openai", model=model, base_url=profile.base_url, profile=name.strip())


DEPLOYMENT_KEY_ENV = "SLMFORGE_API_KEY"


def _parse_deployment(spec: str, rest: str) -> EngineSpec:
    """`NAME` (the base model) or `NAME:ADAPTER` of a deployment in the local registry."""
    from slmforge.serve.deployments import get

    name, _, adapter = rest.partition(":")
    if not name.strip():
        raise InputError(f"engine spec {spec!r} names no deployment; e.g. deploy:travel-bot")
    deployment = get(name.strip())
    model = adapter.strip() or deployment.name
    return EngineSpec(
        kind="openai", model=model, base_url=deployment.url, key_env=DEPLOYMENT_KEY_ENV
    )


def _parse_local(spec: str, text: str) -> EngineSpec:
    if "+" not in text:
        return EngineSpec(kind="local", model=text)
    # the whole spec was not an existing path, so the last "+" separates base and adapter
    base, _, adapter = text.rpartition("+")
    if not base.strip() or not adapter.strip():
        raise InputError(f"engine spec {spec!r}: expected PATH+ADAPTER_DIR with both parts")
    return EngineSpec(kind="local", model=base.strip(), adapter=adapter.strip())


class AdapterSelected:
    """An engine that uses `adapter` for requests that name none (for PATH+ADAPTER_DIR)."""

    def __init__(self, engine: Any, adapter: str) -> None:
        self.engine = engine
        self.adapter = adapter
        self.name = f"{engine.name}+{adapter}"

    def chat(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Any]:
        return self.engine.chat(messages, params, adapter or self.adapter)

    def adapters(self) -> list[str]:
        return self.engine.adapters()


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
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 60.0,
    max_retries: int = 5,
    api_version: str | None = None,
    **local_options: Any,
) -> Engine:
    """Build the engine a spec names. Remote options apply to openai: and profile: specs (a
    profile brings its own key and api-version, so `api_key`/`api_key_env`/`api_version` do
    not apply to it); `api_version` (or $OPENAI_API_VERSION for an Azure endpoint) makes an
    openai: spec talk Azure OpenAI; `local_options` go to `TorchEngine` for local models."""
    parsed = parse_engine_spec(spec) if isinstance(spec, str) else spec
    if parsed.profile is not None:
        from slmforge.profiles import profile_engine

        return profile_engine(
            parsed.profile, parsed.model, timeout_s=timeout_s, max_retries=max_retries
        )
    if parsed.kind == "openai":
        from slmforge.runtime.remote import RemoteEngine

        base_url = parsed.base_url or OPENAI_DEFAULT_BASE_URL
        return RemoteEngine(
            parsed.model,
            base_url,
            api_key=api_key,
            api_key_env=parsed.key_env or api_key_env,
            timeout_s=timeout_s,
            max_retries=max_retries,
            api_version=azure_api_version(base_url, api_version),
        )
    return _local_engine(parsed, local_options)


def _local_engine(parsed: EngineSpec, local_options: dict[str, Any]) -> Engine:
    """An ONNX folder (genai_config.json) -> OnnxEngine; an adapter folder -> its base with it;
    any other folder or hub id -> TorchEngine. `+ADAPTER` selects or loads an adapter."""
    folder = Path(parsed.model)
    if (folder / "genai_config.json").is_file():
        from slmforge.runtime.onnx_engine import OnnxEngine

        engine: Any = OnnxEngine(folder)
        if parsed.adapter is None:
            return engine
        if parsed.adapter not in engine.adapters():
            known = ", ".join(engine.adapters()) or "none"
            raise InputError(f"{folder} has no adapter {parsed.adapter!r} (known: {known})")
        return AdapterSelected(engine, parsed.adapter)
    # imported here so remote use never pays for (or needs) torch
    from slmforge.runtime.torch_engine import TorchEngine

    base, adapter = parsed.model, parsed.adapter
    if adapter is None and (folder / "adapter_config.json").is_file():
        from slmforge.train.merge import base_of

        base, adapter = base_of(folder), str(folder)
    if adapter is None:
        return TorchEngine(base, **local_options)
    if not Path(adapter).is_dir():
        raise InputError(f"adapter folder not found: {adapter}")
    engine = TorchEngine(base, adapters={DEFAULT_ADAPTER: adapter}, **local_options)
    return AdapterSelected(engine, DEFAULT_ADAPTER)
