"""`slmforge chat --model SPEC`: a terminal chat with any model (`slmforge.app.tui`).

Interactive on a terminal (a `>` prompt, commands, Ctrl-C stops an answer); piped, it answers
one question per line until end of input (`echo hi | slmforge chat --model m`). Answers
stream to stdout; the prompt, command replies and `--timings` go to stderr, so stdout holds
only the answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from slmforge.config import parse_adapter_options, validate
from slmforge.errors import InputError

SPEC_HELP = (
    "Model folder (PyTorch or ONNX), adapter folder, hub id, FOLDER+ADAPTER, "
    "openai:MODEL@BASE_URL, deploy:NAME or profile:NAME."
)


def _model(argument: str | None, option: str | None) -> str:
    if argument and option and argument != option:
        raise InputError(f"two models given ({argument} and --model {option}); give one")
    model = option or argument
    if not model:
        raise InputError("no model given; e.g. slmforge chat --model out/onnx-int4")
    return model


def _adapters(values: list[str]) -> tuple[dict[str, Path], str | None]:
    """`--adapter` values: NAME=DIR folders to load, and at most one NAME to select."""
    names = [v for v in values if "=" not in v]
    if len(names) > 1:
        raise InputError(f"--adapter: one adapter answers at a time, got {', '.join(names)}")
    return parse_adapter_options([v for v in values if "=" in v]), next(iter(names), None)


def _structured(tools: Path | None, choice: str, schema: Path | None) -> dict[str, object]:
    """GenParams fields of --tools, --tool-choice and --json-schema."""
    import json

    from slmforge.data.tools import load_tools

    values: dict[str, object] = {}
    if tools is not None:
        values["tools"] = load_tools(tools)
        names = [t["function"]["name"] for t in values["tools"]]  # type: ignore[index]
        if choice not in ("auto", "required", "none") and choice not in names:
            raise InputError(f"--tool-choice {choice}: not auto, required, none or a function "
                             f"of --tools ({', '.join(names)})")  # fmt: skip
        named = {"type": "function", "function": {"name": choice}}
        values["tool_choice"] = choice if choice in ("auto", "required", "none") else named
    elif choice != "auto":
        raise InputError("--tool-choice needs --tools")
    if schema is not None:
        try:
            document = json.loads(schema.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"--json-schema {schema}: {exc}") from None
        values["json_schema"] = {"name": schema.stem, "schema": document, "strict": True}
    return values


def _prompt_on_stderr() -> str:
    sys.stderr.write("> ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def chat(
    model_argument: str | None = typer.Argument(
        None, metavar="MODEL", help="The model, as --model (kept for existing scripts)."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help=SPEC_HELP),
    adapter: list[str] = typer.Option(
        [],
        "--adapter",
        help="NAME of one of the model's adapters to answer with, or NAME=DIR to load a "
        "PyTorch LoRA adapter folder (repeat; the first loaded answers unless NAME picks one).",
    ),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    timings: bool = typer.Option(
        False, "--timings", help="After each answer, print time to first token and tokens/s."
    ),
    tools: Path | None = typer.Option(
        None,
        "--tools",
        help="JSON file of functions the model may call (OpenAI tool definitions); calls are "
        "shown and /tool RESULT answers them.",
    ),
    tool_choice: str = typer.Option(
        "auto", "--tool-choice", help="auto, required, none, or a function's name."
    ),
    json_schema: Path | None = typer.Option(
        None,
        "--json-schema",
        help="JSON schema file: every answer is JSON matching it (structured output).",
    ),
    chat_template: str | None = typer.Option(
        None,
        "--chat-template",
        help="Replace the model's chat template: a Jinja file, the template text, or a "
        "format name (phi3, chatml, llama3, mistral).",
    ),
) -> None:
    """Chat with a model in the terminal: streamed answers, /reset, /adapter NAME,
    /system TEXT, /exit; Ctrl-C stops an answer. Piped: one question per line."""
    from rich.console import Console

    from slmforge.app.tui import ChatIO, open_chat, run_chat
    from slmforge.runtime.engine import GenParams

    values = {"max_tokens": max_tokens, "temperature": temperature}
    values |= _structured(tools, tool_choice, json_schema)
    params = validate(GenParams, values, option_keys=set(values))
    load, selected = _adapters(adapter)
    session = open_chat(
        _model(model_argument, model),
        params,
        load=load,
        chat_template=chat_template,
        system=system,
    )
    if selected is not None:
        try:
            session.select_adapter(selected)
        except InputError as err:
            raise InputError(
                f"--adapter {selected}: {err}; expected NAME=PATH to load an adapter folder, "
                "or the name of one of the model's adapters"
            ) from None
    stderr = Console(stderr=True, highlight=False)
    interactive = sys.stdin.isatty()
    if interactive and sys.stdout.isatty():
        import readline  # noqa: F401  (input() then edits lines and keeps a history)

    def read() -> str | None:
        if not interactive:
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None
        try:  # the prompt on stdout only when stdout is the terminal too
            return input("> ") if sys.stdout.isatty() else _prompt_on_stderr()
        except EOFError:  # Ctrl-D
            stderr.print("")
            return None

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(text: str) -> None:
        stderr.print(text, style="dim", markup=False, soft_wrap=True)

    run_chat(session, ChatIO(read, write, note, interactive), timings=timings)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
