"""Options of `slmforge serve`: what to serve, where, for whom, and how much at once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slmforge.config import StrictModel


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
    max_tokens_cap: int = Field(4096, ge=1, description="Largest max_tokens a request may ask.")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body in bytes.")
    device: str = Field("cpu", description="Torch device for PyTorch models (cpu, cuda, cuda:1).")
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) weights.")
