"""Options of `slmforge serve-jobs`: the OpenAI fine-tuning jobs API served locally."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from slmforge.config import StrictModel


class JobsServeConfig(StrictModel):
    host: str = Field(
        "127.0.0.1", description="Address to bind; 0.0.0.0 exposes it to the network."
    )
    port: int = Field(8001, ge=0, le=65535, description="Port; 0 picks a free one.")
    api_key: str | None = Field(None, description="Require this key (Authorization: Bearer KEY).")
    api_keys_file: Path | None = Field(
        None, description="File of accepted keys, one per line (or sha256:HEX of a key)."
    )
    workers: int = Field(1, ge=1, le=64, description="Jobs that train at once (one process each).")
    home: Path | None = Field(
        None, description="Where files, jobs and models are kept (default: $SLMFORGE_HOME/jobs)."
    )
    resume_interrupted: bool = Field(
        False,
        description="Resume jobs a stopped server left running from their last checkpoint "
        "(default: mark them failed).",
    )
    model_root: Path | None = Field(
        None,
        description="Only accept local base models inside this folder (hub ids are always "
        "accepted).",
    )
    device: str = Field("auto", description="Training device for jobs: auto, cpu, cuda or mps.")
    max_body_bytes: int = Field(
        512 << 20, ge=1024, description="Largest request body (uploads) in bytes."
    )
