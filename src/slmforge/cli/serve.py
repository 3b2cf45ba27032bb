"""`slmforge serve MODEL`: an OpenAI-compatible endpoint over a local model and its adapters."""

from __future__ import annotations

import typer

from slmforge.cli.options import model_command
from slmforge.config.serve import ServeConfig


def register(app: typer.Typer) -> None:
    @model_command(app, "serve", ServeConfig, arguments=("model",), config_file=True)
    def serve(cfg: ServeConfig) -> None:
        """Serve a model over the OpenAI API (chat, completions, models, health, metrics)."""
        if cfg.backend == "ray":
            from slmforge.serve.ray_backend import run_ray

            run_ray(cfg)
            return
        from slmforge.serve.server import Server

        Server(cfg).run()
