"""`slmforge` entry point: global options, verb registration, and error -> exit code mapping."""

from __future__ import annotations

import sys
import traceback
import warnings
from importlib import import_module

import typer

from slmforge import __version__, progress
from slmforge.errors import SlmforgeError
from slmforge.native_caches import bound_native_caches
from slmforge.progress import LogFormat

# Each verb module exposes `register(app)`; the order here is the order in --help.
VERB_MODULES = [
    "data",
    "models",
    "finetune",
    "tune",
    "optimize",
    "serve",
    "serve_jobs",
    "jobs",
    "deploy",
    "chat",
    "eval",
    "app",
    "run",
    "clean",
    "profile",
    "doctor",
    "safety",
]

app = typer.Typer(
    name="slmforge",
    help="Take a small language model from data to a fine-tuned, optimized, served model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _show_version(value: bool) -> None:
    if value:
        print(f"slmforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    log_format: LogFormat = typer.Option(
        "auto", "--log-format", help="Progress and logs: auto, rich, plain or json (stderr)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    _state["debug"] = debug
    progress.configure(log_format, quiet=quiet)


for _name in VERB_MODULES:
    import_module(f"slmforge.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2 (input) or 1 (run)."""
    bound_native_caches()  # before any verb computes a product
    # transformers warns about its own renamed attribute whenever peft touches a model; the
    # user can do nothing about it, so it is noise in every fine-tune and merge.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    try:
        app(args=argv, prog_name="slmforge")
    except SlmforgeError as err:
        if _state["debug"]:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
