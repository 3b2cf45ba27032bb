"""`slmforge chat MODEL`: a terminal chat with a local model (and its LoRA adapters).

Reads one user message per line from stdin, so it works piped (`echo hi | slmforge chat m`) as
well as interactively; `/exit` or end of input ends it. Answers stream to stdout; time to first
token and tokens/s go to stderr, dim, so stdout holds only the conversation.
"""

from __future__ import annotations

import sys

import typer

from slmforge.config import parse_adapter_options, validate

EXIT_COMMANDS = {"/exit", "/quit"}


def _stats_line(final: object) -> str:
    timings = getattr(final, "timings", None)
    usage = getattr(final, "usage", None)
    parts = []
    if timings is not None and timings.ttft_s is not None:
        parts.append(f"ttft {timings.ttft_s * 1000:.0f} ms")
    if timings is not None and timings.tokens_per_s is not None:
        parts.append(f"{timings.tokens_per_s:.1f} tokens/s")
    if usage is not None:
        parts.append(f"{usage.completion_tokens} tokens")
    return ", ".join(parts)


def chat(
    model: str = typer.Argument(
        help="Model folder (PyTorch or ONNX), adapter folder, hub id, FOLDER+ADAPTER, "
        "openai:MODEL@BASE_URL, or profile:NAME (slmforge profile add)."
    ),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="NAME=DIR of a LoRA adapter; repeat for more. The first one answers."
    ),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most new tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
) -> None:
    """Chat with a model in the terminal; one message per line, /exit or EOF ends."""
    from rich.console import Console

    from slmforge.runtime.engine import GenParams

    values = {"max_tokens": max_tokens, "temperature": temperature}
    params = validate(GenParams, values, option_keys=set(values))
    adapters = parse_adapter_options(adapter)
    if adapters:
        from slmforge.runtime.torch_engine import TorchEngine

        engine = TorchEngine(model, adapters=adapters)
    else:
        from slmforge.runtime.specs import load_engine

        engine = load_engine(model)
    active = next(iter(adapters), None)
    stderr = Console(stderr=True, highlight=False)
    interactive = sys.stdin.isatty()
    history = [{"role": "system", "content": system}] if system else []
    while True:
        if interactive:
            stderr.print("[bold]>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            break
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        answer, final = [], None
        for delta in engine.chat(history, params, adapter=active):
            if delta.text:
                answer.append(delta.text)
                sys.stdout.write(delta.text)
                sys.stdout.flush()
            if delta.timings is not None:
                final = delta
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(answer)})
        stderr.print(_stats_line(final), style="dim", markup=False)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
