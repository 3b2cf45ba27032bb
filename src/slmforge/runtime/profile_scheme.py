"""`profile:NAME[:MODEL]`: engines from cloud profiles (`slmforge profile add`).

The profile store (`slmforge.profiles`: profiles.yaml and the keys) sits below `runtime` and
knows nothing of engines; this module, in `runtime`, turns a stored profile into a
`RemoteEngine` and registers the `profile:` scheme with the resolver (`runtime/specs.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmforge.errors import RemoteError
from slmforge.profiles import describe_key, get_profile, resolve_key
from slmforge.runtime.schemes import EngineSpec, RemoteOptions, Scheme

_TEST_PROMPT = "Reply with the single word OK."


def profile_engine(
    name: str, model: str | None = None, timeout_s: float = 60.0, max_retries: int = 5
) -> Any:
    """A `RemoteEngine` for profile `name`, asking for `model` (default: the profile's)."""
    from slmforge.runtime.remote import RemoteEngine

    profile = get_profile(name)
    return RemoteEngine(
        model or profile.request_model,
        profile.base_url,
        api_key=resolve_key(name, profile),
        timeout_s=timeout_s,
        max_retries=max_retries,
        api_version=profile.api_version if profile.kind == "azure-openai" else None,
        name=f"profile:{name}",
    )


def _parse(spec: str, rest: str) -> EngineSpec:
    """`NAME` or `NAME:MODEL` (profile names have no colon; model names may)."""
    name, _, model = rest.partition(":")
    profile = get_profile(name.strip())
    model = model.strip() or profile.request_model
    return EngineSpec(kind="openai", model=model, base_url=profile.base_url, profile=name.strip())


def _build(parsed: EngineSpec, remote: RemoteOptions) -> Any:
    # a profile brings its own key and api-version: only timeouts and retries apply
    return profile_engine(
        parsed.profile, parsed.model, timeout_s=remote.timeout_s, max_retries=remote.max_retries
    )


@dataclass(frozen=True)
class ProbeResult:
    """What one tiny request through a profile showed."""

    name: str
    model: str
    base_url: str
    latency_s: float
    ttft_s: float | None
    reply: str
    completion_tokens: int


def probe_profile(name: str, model: str | None = None, timeout_s: float = 30.0) -> ProbeResult:
    """Send one tiny chat request through profile `name` (`slmforge profile test`)."""
    from slmforge.runtime.engine import Completion, GenParams, complete

    profile = get_profile(name)
    engine = profile_engine(name, model, timeout_s=timeout_s, max_retries=0)
    messages = [{"role": "user", "content": _TEST_PROMPT}]
    try:
        answer: Completion = complete(engine, messages, GenParams(max_tokens=8))
    except RemoteError as err:
        if err.status in (401, 403):
            raise RemoteError(
                f"profile {name!r}: {profile.base_url} rejected the API key "
                f"(HTTP {err.status}) from {describe_key(name, profile)}; set the right key "
                f"and run slmforge profile test {name} again",
                status=err.status,
            ) from None
        raise
    return ProbeResult(
        name=name,
        model=engine.model,
        base_url=profile.base_url,
        latency_s=answer.timings.total_s,
        ttft_s=answer.timings.ttft_s,
        reply=answer.text.strip(),
        completion_tokens=answer.usage.completion_tokens,
    )


PROFILE_SCHEME = Scheme("profile", "profile:NAME", _parse, _build)
