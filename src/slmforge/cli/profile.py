"""`slmforge profile add|list|test|remove`: named cloud endpoints, usable as `profile:NAME`.

A key is never an option value (it would land in shell history and `ps`): `profile add` asks
for it without echo on a terminal, or reads one line from standard input when piped.
"""

from __future__ import annotations

import getpass
import json
import sys

import typer

from slmforge.cli.options import model_command
from slmforge.config.profiles import ProfileAddConfig
from slmforge.errors import InputError

profile_app = typer.Typer(
    help="Cloud profiles: named OpenAI-compatible endpoints, used as profile:NAME.",
    no_args_is_help=True,
)


def _read_key(name: str) -> str:
    if sys.stdin.isatty():
        key = getpass.getpass(f"API key for profile {name} (not echoed): ")
    else:
        key = sys.stdin.readline()
    if not key.strip():
        raise InputError(
            f"profile {name!r}: no API key given; type it when asked or pipe it in "
            f"(printenv MY_KEY | slmforge profile add {name} ...), or use --api-key-env VAR"
        )
    return key.strip()


@model_command(profile_app, "add", ProfileAddConfig, arguments=("name",))
def add(cfg: ProfileAddConfig) -> None:
    """Add a profile; its key stays in an env var, the system keyring or (if asked) a mode-600
    file, and is read from a prompt or standard input, never from an option."""
    from slmforge.profiles import describe_key, new_profile, save_profile

    profile = new_profile(cfg)
    key = _read_key(cfg.name) if profile.key in ("keyring", "file") else None
    save_profile(cfg.name, profile, key)
    typer.echo(
        f"saved profile {cfg.name}: {profile.kind} {profile.base_url} "
        f"({profile.request_model}), key: {describe_key(cfg.name, profile)}"
    )


@profile_app.command("list")
def list_profiles(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List profiles and where each key is (never the key)."""
    from rich.console import Console
    from rich.table import Table

    from slmforge.profiles import describe_key, key_available, load_profiles, profiles_path

    profiles = load_profiles()
    if as_json:
        rows = [
            {
                "name": name,
                **p.model_dump(),
                "key_location": describe_key(name, p),
                "key_available": key_available(name, p),
            }
            for name, p in profiles.items()
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not profiles:
        typer.echo(f"no profiles yet ({profiles_path()}); add one with slmforge profile add")
        return
    table = Table(title=str(profiles_path()))
    for column in ("name", "kind", "base URL", "model", "key"):
        table.add_column(column, overflow="fold")
    for name, p in profiles.items():
        model = p.request_model + (f" (api {p.api_version})" if p.api_version else "")
        table.add_row(name, p.kind, p.base_url, model, describe_key(name, p))
    Console().print(table)


@profile_app.command("test")
def test(
    name: str = typer.Argument(help="Profile name."),
    model: str | None = typer.Option(None, "--model", help="Ask for this model instead."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Send one tiny request through a profile; show the model, latency and reply."""
    from slmforge.runtime.profile_scheme import probe_profile

    result = probe_profile(name, model, timeout_s=timeout)
    ttft = f", first token {result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else ""
    typer.echo(
        f"profile {result.name}: ok, model {result.model} at {result.base_url}, "
        f"latency {result.latency_s * 1000:.0f} ms{ttft}, reply {result.reply!r}"
    )


@profile_app.command("remove")
def remove(name: str = typer.Argument(help="Profile name.")) -> None:
    """Remove a profile and the key stored for it (keyring entry or key file)."""
    from slmforge.profiles import remove_profile

    remove_profile(name)
    typer.echo(f"removed profile {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
