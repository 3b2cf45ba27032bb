"""Options of `slmforge serve`: what to serve, where, for whom, and how much at once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from slmforge.config import StrictModel
from slmforge.config.app import Policy, route_field


class ServeConfig(StrictModel):
    model: str = Field(
        description="Model folder (PyTorch merged/base, adapter folder, or ONNX folder) or hub id."
    )
    adapter: list[str] = Field(
        default_factory=list,
        description="NAME=PATH of another adapter (a LoRA folder, or an .onnx_adapter file for "
        "ONNX); repeat for more. Requests select it with model=NAME.",
    )
    host: str = Field(
        "127.0.0.1", description="Address to bind; 0.0.0.0 exposes it to the network."
    )
    port: int = Field(8000, ge=0, le=65535, description="Port; 0 picks a free one.")
    api_key: str | None = Field(None, description="Require this key (Authorization: Bearer KEY).")
    api_keys_file: Path | None = Field(
        None, description="File of accepted keys, one per line (or sha256:HEX of a key)."
    )
    engine: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="Runtime; auto follows the artifact (ONNX folder -> onnx)."
    )
    served_model_name: str | None = Field(
        None, description="Model id clients use for the base (default: the folder's name)."
    )
    max_concurrency: int = Field(1, ge=1, le=256, description="Generations running at once.")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a slot before 429.")
    prefix_cache_mib: int = Field(
        256,
        ge=0,
        description="Memory for the prefix cache: keys and values of prompt prefixes (system "
        "prompts, tool definitions, few-shot examples) reused by later requests with the same "
        "adapter; least recently used first out; 0 turns it off.",
    )
    max_tokens_cap: int = Field(4096, ge=1, description="Largest max_tokens a request may ask.")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body in bytes.")
    device: str = Field("cpu", description="Torch device for PyTorch models (cpu, cuda, cuda:1).")
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) weights.")
    safety: Path | None = Field(
        None,
        description="Content filter policy YAML (docs/safety.md): blocks harmful prompts (400 "
        "content_filter) and answers (finish_reason content_filter), annotates responses.",
    )
    backend: Literal["uvicorn", "ray"] = Field(
        "uvicorn", description="uvicorn: one process; ray: Ray Serve replicas behind one endpoint."
    )
    replicas: int = Field(1, ge=1, description="Ray Serve replicas (fixed count).")
    min_replicas: int | None = Field(
        None, ge=0, description="Ray Serve autoscaling: fewest replicas (with --max-replicas)."
    )
    max_replicas: int | None = Field(None, ge=1, description="Ray Serve autoscaling: most.")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves for each replica.")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica.")
    ray_address: str | None = Field(
        None, description="Existing Ray cluster (ray://HOST:10001 or auto); default: start one."
    )
    route: Policy | None = Field(
        None,
        description="Answer chat requests through the router (docs/app.md): local, cloud, "
        "compare (local as choice 0, cloud as choice 1), local-first or cost; needs --cloud.",
    )
    cloud: str | None = Field(
        None,
        description="With --route: the cloud model, as in slmforge eval (openai:MODEL@BASE_URL, "
        "profile:NAME, deploy:NAME[:ADAPTER]).",
    )
    ttft_timeout_s: float | None = route_field("ttft_timeout_s")
    timeout_s: float | None = route_field("timeout_s")
    long_prompt_tokens: int = route_field("long_prompt_tokens")
    min_mean_logprob: float = route_field("min_mean_logprob")
    confidence_tokens: int = route_field("confidence_tokens")
    cloud_api_version: str | None = route_field("cloud_api_version")
    cloud_key_env: str | None = route_field("cloud_key_env")

    @model_validator(mode="after")
    def _scaling(self) -> ServeConfig:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas: give both --min-replicas and --max-replicas")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas: must not exceed --max-replicas")
        ray_only = self.replicas > 1 or self.min_replicas is not None or self.ray_address
        if ray_only and self.backend != "ray":
            raise ValueError("backend: replicas and Ray options need --backend ray")
        if (self.route is None) != (self.cloud is None):
            raise ValueError("route: give both --route POLICY and --cloud SPEC")
        if self.route is not None and self.backend == "ray":
            raise ValueError("route: routing runs with --backend uvicorn only")
        return self
