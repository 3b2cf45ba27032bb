"""Options of `slmforge app` and of routing (`slmforge app`, `slmforge serve --route`).

`RouteSettings` are the thresholds of a routing decision and `CloudOptions` how to reach the
cloud; `AppConfig` and `ServeConfig` declare the same fields with `route_field`, so each is a
CLI option of both, described once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field

from slmforge.config import StrictModel

Policy = Literal["local", "cloud", "compare", "local-first", "cost"]
POLICIES: tuple[str, ...] = get_args(Policy)


class RouteSettings(StrictModel):
    """The thresholds a routing decision uses; the app's page may change them per request."""

    ttft_timeout_s: float | None = Field(
        10.0,
        gt=0,
        description="local-first/cost: fall back to the cloud when the local model's first "
        "token takes longer than this (seconds).",
    )
    timeout_s: float | None = Field(
        120.0,
        gt=0,
        description="local-first/cost: fall back when the local answer takes longer than this "
        "in all (seconds).",
    )
    long_prompt_tokens: int = Field(
        1024, ge=1, description="cost: prompts with more tokens than this go to the cloud."
    )
    min_mean_logprob: float = Field(
        -2.5,
        le=0,
        description="cost: the cloud answers when the local model's mean token log-probability "
        "over its first tokens is below this (low confidence).",
    )
    confidence_tokens: int = Field(
        16, ge=1, le=512, description="cost: how many first tokens the confidence is judged on."
    )


class CloudOptions(StrictModel):
    """How to reach the cloud model beyond its spec."""

    cloud_api_version: str | None = Field(
        None,
        description="Azure OpenAI api-version for --cloud openai:DEPLOYMENT@https://RESOURCE."
        "openai.azure.com (default: $OPENAI_API_VERSION for Azure endpoints).",
    )
    cloud_key_env: str | None = Field(
        None,
        description="Env var holding the cloud API key (default: OPENAI_API_KEY, or "
        "AZURE_OPENAI_API_KEY for Azure endpoints; deploy: uses SLMFORGE_API_KEY).",
    )


def route_field(name: str) -> Any:
    """A copy of a `RouteSettings`/`CloudOptions` field, so `app` and `serve` declare the same
    option once, each in the place it belongs in their --help."""
    fields = RouteSettings.model_fields | CloudOptions.model_fields
    return copy.deepcopy(fields[name])


def route_settings(config: Any) -> RouteSettings:
    """The routing thresholds of a config that declares the `route_field`s."""
    return RouteSettings(**{name: getattr(config, name) for name in RouteSettings.model_fields})


class AppConfig(StrictModel):
    local: str = Field(
        description="The on-device model: an ONNX folder (slmforge optimize) or a model or "
        "adapter folder, optionally +ADAPTER (an adapter name of the ONNX folder, or an "
        "adapter folder)."
    )
    cloud: str = Field(
        description="The cloud model, as in slmforge eval: openai:MODEL@BASE_URL, "
        "profile:NAME, deploy:NAME[:ADAPTER]."
    )
    route: Policy = Field(
        "compare",
        description="Policy the page starts with: compare (two panes), local, cloud, "
        "local-first or cost.",
    )
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes it.")
    port: int = Field(7860, ge=0, le=65535, description="Port; 0 picks a free one.")
    judge: str | None = Field(
        None,
        description="Engine spec of a judge that says which answer of a comparison it prefers "
        "and why (e.g. openai:gpt-4o-mini).",
    )
    safety: Path | None = Field(
        None,
        description="Content filter policy YAML (docs/safety.md) for the local model: a "
        "blocked prompt or answer makes local-first fall back to the cloud.",
    )
    ttft_timeout_s: float | None = route_field("ttft_timeout_s")
    timeout_s: float | None = route_field("timeout_s")
    long_prompt_tokens: int = route_field("long_prompt_tokens")
    min_mean_logprob: float = route_field("min_mean_logprob")
    confidence_tokens: int = route_field("confidence_tokens")
    cloud_api_version: str | None = route_field("cloud_api_version")
    cloud_key_env: str | None = route_field("cloud_key_env")
