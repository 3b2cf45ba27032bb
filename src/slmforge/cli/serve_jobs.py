"""`slmforge serve-jobs`: the OpenAI fine-tuning jobs API (files, jobs, events, checkpoints)."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_command
from slmforge.config.jobs import JobsServeConfig


def register(app: typer.Typer) -> None:
    @model_command(app, "serve-jobs", JobsServeConfig, config_file=True)
    def serve_jobs(cfg: JobsServeConfig) -> None:
        """Serve the OpenAI fine-tuning API locally; jobs train in worker processes."""
        from slmforge.jobs.server import JobsServer

        JobsServer(cfg).run()
