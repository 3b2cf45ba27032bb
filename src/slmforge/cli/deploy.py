"""`slmforge deploy create|list|test|logs|restart|delete`: local endpoints that outlive the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from slmforge.errors import InputError, RunError

deploy_app = typer.Typer(help="Named, long-running model endpoints.", no_args_is_help=True)
KEY_ENV = "SLMFORGE_API_KEY"


@deploy_app.command("create")
def create(
    name: str = typer.Argument(help="Deployment name (lowercase letters, digits, '-')."),
    model: str = typer.Option(..., "--model", help="Model, adapter or ONNX folder to serve."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=PATH of another adapter."),
    engine: str = typer.Option("auto", "--engine", help="auto, torch or onnx."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(0, "--port", help="Port; 0 picks a free one."),
    safety: Path | None = typer.Option(
        None, "--safety", help="Content filter policy YAML (docs/safety.md); copied in."
    ),
    route: str | None = typer.Option(
        None,
        "--route",
        help="Answer chat through the router, as slmforge serve --route: local, cloud, "
        "compare, local-first or cost; needs --cloud.",
    ),
    cloud: str | None = typer.Option(
        None, "--cloud", help="With --route: the cloud model (openai:MODEL@URL, profile:NAME)."
    ),
    cloud_key_env: str | None = typer.Option(
        None,
        "--cloud-key-env",
        help="Env var with the cloud API key, read from this shell's environment when the "
        "deployment starts or restarts (never stored).",
    ),
    cloud_api_version: str | None = typer.Option(
        None, "--cloud-api-version", help="Azure OpenAI api-version of --cloud."
    ),
) -> None:
    """Start a deployment and print its endpoint and API key (shown only this once)."""
    from slmforge.serve import deployments

    if engine not in ("auto", "torch", "onnx"):
        raise InputError(f"--engine {engine!r}: expected auto, torch or onnx")
    routing = {
        "route": route,
        "cloud": cloud,
        "cloud_key_env": cloud_key_env,
        "cloud_api_version": cloud_api_version,
    }
    routing = {k: v for k, v in routing.items() if v is not None}
    deployment, key = deployments.create(
        name, model, adapter, engine, host, port, safety, routing or None
    )
    typer.echo(f"deployment {deployment.name} is up at {deployment.url}")
    typer.echo(f"model: {deployment.name}  adapters: {', '.join(deployment.adapters) or '-'}")
    if route:
        typer.echo(f"chat is routed: {route}, cloud {cloud}")
    typer.echo(f"api key (shown once, store it now): {key}")


@deploy_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Deployments with their real health (process and /health), not what was recorded."""
    import json

    from rich.console import Console
    from rich.table import Table

    from slmforge.serve import deployments

    rows = [deployments.status(d) for d in deployments.all_deployments()]
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": s.deployment.name,
                        "state": s.state,
                        "url": s.deployment.url,
                        "model": s.deployment.model,
                        "pid": s.deployment.pid,
                        "route": deployments.route_of(s.deployment.name) or None,
                        "detail": s.detail,
                    }
                    for s in rows
                ],
                indent=2,
            )
        )
        return
    table = Table(title="deployments")
    for column in ("name", "state", "url", "model", "detail"):
        table.add_column(column)
    colors = {"up": "green", "loading": "yellow", "down": "red"}
    for s in rows:
        state = f"[{colors[s.state]}]{s.state}[/{colors[s.state]}]"
        table.add_row(s.deployment.name, state, s.deployment.url, s.deployment.model, s.detail)
    Console().print(table)


@deploy_app.command("test")
def test(
    name: str = typer.Argument(help="Deployment name."),
    data: Path = typer.Option(..., "--data", help="Sample data (any format slmforge reads)."),
    limit: int = typer.Option(5, "--limit", min=1, help="How many rows to send."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="Most tokens per answer."),
    api_key: str | None = typer.Option(
        None, "--api-key", help=f"The deployment's key (default: ${KEY_ENV})."
    ),
) -> None:
    """Send sample prompts, print answers and latency; exit 1 if any request failed."""
    from rich.console import Console

    from slmforge.data.formats import read_examples
    from slmforge.serve import deployments

    key = api_key or os.environ.get(KEY_ENV)
    if not key:
        raise InputError(f"deploy test needs the deployment's key: --api-key or ${KEY_ENV}")
    deployment = deployments.get(name)
    examples = read_examples(data)[:limit]
    conversations = [_prompt_messages(example.messages) for example in examples]
    console = Console(highlight=False)
    failed = 0
    for result in deployments.probe(deployment, conversations, key, max_tokens):
        mark = "[red]FAIL[/red]" if result.error else "[green]ok[/green]"
        console.print(f"{mark} {result.latency_s * 1000:.0f} ms  [bold]{result.prompt}[/bold]")
        console.print(f"    {result.error or result.answer}", markup=False)
        failed += bool(result.error)
    console.print(f"{len(conversations) - failed} passed, {failed} failed")
    if failed:
        raise RunError(f"{failed} of {len(conversations)} requests to {name} failed")


def _prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to its last user message (the reference answer is left out)."""
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: last_user + 1]


@deploy_app.command("logs")
def logs(
    name: str = typer.Argument(help="Deployment name."),
    lines: int = typer.Option(50, "--lines", "-n", min=1, help="How many last lines."),
) -> None:
    """The last lines of a deployment's server log."""
    from slmforge.serve import deployments

    deployments.get(name)
    for line in deployments.tail(name, lines):
        typer.echo(line)


@deploy_app.command("restart")
def restart(name: str = typer.Argument(help="Deployment name.")) -> None:
    """Start a deployment's server again (after a crash or a reboot); same port and key."""
    from slmforge.serve import deployments

    deployment = deployments.restart(name)
    typer.echo(f"deployment {deployment.name} is up at {deployment.url}")


@deploy_app.command("delete")
def delete(name: str = typer.Argument(help="Deployment name.")) -> None:
    """Stop a deployment's server and remove its record, key and log."""
    from slmforge.serve import deployments

    deployments.delete(name)
    typer.echo(f"deleted {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
