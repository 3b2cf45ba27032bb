"""The terminal chat behind `slmforge chat`: one engine, a conversation, commands and the
read -> stream -> timings loop, independent of the terminal.

The caller passes a `ChatIO`: `read()` gives the next line (None at end of input; Ctrl-C at the
prompt arrives as KeyboardInterrupt), `write(text)` streams answer text (stdout in the CLI) and
`note(text)` says everything else (hints, command replies, timings: stderr), so the answers
are the only thing on stdout. This module never prints by itself.

Ctrl-C while an answer streams stops that answer only: the stream is closed (a local engine
releases its model, a remote one its connection), what was shown stays in the conversation and
the chat goes on; Ctrl-C at the prompt, end of input or `/exit` end it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.errors import InputError, SlmforgeError
from slmforge.runtime.engine import Delta, Engine, GenParams, Message

NO_ADAPTER = "none"  # `/adapter none`: the base model


@dataclass
class ChatIO:
    read: Callable[[], str | None]
    write: Callable[[str], None]
    note: Callable[[str], None]
    interactive: bool = False  # a person types: errors are shown and the chat goes on


@dataclass
class Turn:
    text: str
    final: Delta | None  # the last delta, with usage and timings; None when stopped
    stopped: bool = False
    called: bool = False  # the answer calls tools (results come with /tool)


@dataclass
class ChatSession:
    """The conversation with one engine: history, system message and the active adapter."""

    engine: Engine
    params: GenParams
    adapter: str | None = None
    system: str | None = None
    history: list[Message] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # ids of calls awaiting a /tool reply

    def select_adapter(self, name: str | None) -> None:
        known = self.engine.adapters()
        if name is not None and name not in known:
            have = ", ".join(known) if known else "none"
            raise InputError(f"no adapter {name!r} (this model's adapters: {have})")
        self.adapter = name

    def reset(self) -> None:
        self.history.clear()
        self.pending.clear()

    def messages(self, question: str | None) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        asked = [{"role": "user", "content": question}] if question is not None else []
        return [*system, *self.history, *asked]

    def reply_to_call(self, result: str) -> bool:
        """Record `result` as the reply to the oldest pending call; True when none is left (the
        model answers next)."""
        if not self.pending:
            raise InputError("no tool call is waiting for a result")
        self.history.append(
            {"role": "tool", "tool_call_id": self.pending.pop(0), "content": result}
        )
        return not self.pending

    def ask(self, question: str | None, write: Callable[[str], None]) -> Turn:
        """Stream one answer through `write` (None: continue after tool results); Ctrl-C stops
        it and keeps what was shown. Tool calls are shown as they come and wait for /tool."""
        parts: list[str] = []
        calls: list[dict[str, Any]] = []
        final: Delta | None = None
        stream: Iterator[Delta] | None = None
        stopped = False
        try:
            stream = self.engine.chat(self.messages(question), self.params, self.adapter)
            for delta in stream:
                if delta.text:
                    parts.append(delta.text)
                    write(delta.text)
                for call in delta.tool_calls or []:
                    function = {"name": call.name, "arguments": call.arguments}
                    calls.append({"id": call.id, "type": "function", "function": function})
                    write(f"\n-> {call.name}({call.arguments})  [{call.id}; reply with /tool]")
                if delta.timings is not None:
                    final = delta
        except KeyboardInterrupt:
            stopped = True
        finally:
            close = getattr(stream, "close", None)
            if close is not None:  # ends the generation wherever it was
                close()
        text = "".join(parts)
        if text or calls or not stopped:  # an answer stopped before any text leaves no trace
            asked = [{"role": "user", "content": question}] if question is not None else []
            answer: Message = {"role": "assistant", "content": text}
            if calls:
                answer["tool_calls"] = calls
                self.pending = [c["id"] for c in calls]
            self.history += [*asked, answer]
        return Turn(text, final, stopped, bool(calls))


def timings_line(final: Delta | None) -> str:
    """`ttft 120 ms, 48.3 tokens/s, 32 tokens` for an answer's final delta."""
    timings = final.timings if final is not None else None
    usage = final.usage if final is not None else None
    parts = []
    if timings is not None and timings.ttft_s is not None:
        parts.append(f"ttft {timings.ttft_s * 1000:.0f} ms")
    if timings is not None and timings.tokens_per_s is not None:
        parts.append(f"{timings.tokens_per_s:.1f} tokens/s")
    if usage is not None:
        parts.append(f"{usage.completion_tokens} tokens")
    return ", ".join(parts) or "no timings"


# -- commands ------------------------------------------------------------------------------------
EXIT = object()  # what a command returns to end the chat


def _reset(session: ChatSession, arg: str) -> str:
    session.reset()
    return "conversation cleared"


def _adapter(session: ChatSession, arg: str) -> str:
    if not arg:
        known = ", ".join(session.engine.adapters()) or "none"
        return f"adapter: {session.adapter or NO_ADAPTER} (available: {known})"
    known = session.engine.adapters()
    session.select_adapter(None if arg == NO_ADAPTER and arg not in known else arg)
    return f"adapter: {session.adapter or NO_ADAPTER + ' (the base model)'}"


def _system(session: ChatSession, arg: str) -> str:
    session.system = arg or None
    return "system message set" if arg else "system message cleared"


CONTINUE = object()  # what a command returns when the model answers next


def _tool(session: ChatSession, arg: str) -> object:
    if not arg:
        raise InputError("/tool RESULT: give the function's result (e.g. JSON)")
    return CONTINUE if session.reply_to_call(arg) else "result recorded; more calls wait"


def _help(session: ChatSession, arg: str) -> str:
    return "commands: " + "; ".join(
        f"{name} {usage}".strip() for name, (usage, _) in COMMANDS.items()
    )


def _exit(session: ChatSession, arg: str) -> object:
    return EXIT


Command = Callable[[ChatSession, str], Any]
COMMANDS: dict[str, tuple[str, Command]] = {
    "/reset": ("(forget the conversation)", _reset),
    "/adapter": ("NAME|none (switch adapter; alone: list them)", _adapter),
    "/system": ("TEXT (set the system message; alone: clear it)", _system),
    "/tool": ("RESULT (the result of the pending tool call)", _tool),
    "/help": ("", _help),
    "/exit": ("(or /quit, Ctrl-D, Ctrl-C at the prompt)", _exit),
    "/quit": ("", _exit),
}


def is_command(text: str) -> bool:
    """`/word ...` is a command; `/etc/hosts?` and other text starting with '/' is a question."""
    first = text.split(maxsplit=1)[0]
    return first.startswith("/") and first[1:].isalpha()


def run_command(session: ChatSession, text: str) -> Any:
    """A reply to note, or `EXIT`; an unknown command or a bad argument is an InputError."""
    name, _, arg = text.partition(" ")
    if name not in COMMANDS:
        raise InputError(f"unknown command {name}; {_help(session, '')}")
    return COMMANDS[name][1](session, arg.strip())


# -- the loop ------------------------------------------------------------------------------------
def run_chat(session: ChatSession, io: ChatIO, timings: bool = False) -> None:
    """Read lines until end of input, `/exit` or Ctrl-C at the prompt; answer each question."""
    if io.interactive:
        io.note(banner(session))
    while True:
        try:
            line = io.read()
        except KeyboardInterrupt:
            io.note("")  # end the line the ^C was typed on
            return
        if line is None:
            return
        text = line.strip()
        if not text:
            if io.interactive:
                io.note("empty input: type a question, or /help for commands")
            continue
        try:
            if is_command(text):
                reply = run_command(session, text)
                if reply is EXIT:
                    return
                if reply is CONTINUE:
                    _answer(session, None, io, timings)
                else:
                    io.note(reply)
            else:
                _answer(session, text, io, timings)
        except SlmforgeError as err:
            if not io.interactive:  # a script wants the failure, not a chat that goes on
                raise
            io.note(f"error: {err}")


def _answer(session: ChatSession, question: str | None, io: ChatIO, timings: bool) -> None:
    from slmforge.runtime.local import ContextLengthError

    try:
        turn = session.ask(question, io.write)
    except ContextLengthError as err:  # the conversation outgrew the context
        raise ContextLengthError(f"{err}; /reset starts a new conversation") from None
    io.write("\n")
    if turn.stopped:
        io.note("(stopped; Ctrl-C again at the prompt exits)")
        return
    produced = turn.final.usage.completion_tokens if turn.final and turn.final.usage else 0
    if not turn.text and not turn.called and produced:  # a blank line alone would look broken
        plural = "s" if produced > 1 else ""
        io.note(f"(no text: {produced} token{plural} generated, none that decodes to text)")
    if timings:
        io.note(timings_line(turn.final))


def banner(session: ChatSession) -> str:
    adapters = session.engine.adapters()
    active = f", adapter {session.adapter}" if session.adapter else ""
    known = f" (adapters: {', '.join(adapters)}{active})" if adapters else ""
    model = getattr(session.engine, "source", session.engine.name)  # a local model's folder
    return (
        f"chatting with {model}{known}. /help lists commands; Ctrl-C stops an answer, "
        "Ctrl-D or /exit leaves"
    )


# -- setting up ----------------------------------------------------------------------------------
def open_chat(
    model: str,
    params: GenParams,
    *,
    load: dict[str, Path] | None = None,
    chat_template: str | None = None,
    system: str | None = None,
) -> ChatSession:
    """A session with the engine `model` names. `load` adds PyTorch LoRA adapter folders by
    name (the first one answers; `select_adapter` switches); `chat_template` (a file, Jinja
    text or a format name) replaces the model's template."""
    from slmforge.runtime.local_models import load_local, plan_local, unwrap
    from slmforge.runtime.specs import load_engine, parse_engine_spec

    if load:
        parsed = parse_engine_spec(model)
        plan = plan_local(parsed.model, parsed.adapter) if parsed.kind == "local" else None
        if plan is None or plan.kind != "torch" or plan.selected is not None:
            raise InputError(
                f"--adapter NAME=DIR loads PyTorch adapter folders onto a PyTorch model folder; "
                f"{model} is not one. Pick one of its own adapters with --adapter NAME"
            )
        engine, default = load_local(plan, adapters=load), next(iter(load))
    else:
        engine, default = unwrap(load_engine(model))  # FOLDER+ADAPTER: its adapter, switchable
    if chat_template is not None:
        override_chat_template(engine, chat_template)
    session = ChatSession(engine, params, system=system)
    session.select_adapter(default)
    return session


def override_chat_template(engine: Engine, value: str) -> None:
    """Render prompts of a local engine with `value`: a format name (phi3, chatml, llama3,
    mistral), a Jinja template file, or the template text itself."""
    import jinja2

    from slmforge.models.chat import FORMATS, stop_strings
    from slmforge.runtime.local import LocalEngine

    if not isinstance(engine, LocalEngine):
        raise InputError(
            "--chat-template applies to local models (a model or ONNX folder); a remote "
            "endpoint renders prompts with its own template"
        )
    template = _template_text(value, FORMATS)
    tokenizer = engine.tokenizer
    tokenizer.chat_template = template
    try:
        engine.prompt_ids([{"role": "user", "content": "Hello?"}])
    except jinja2.TemplateError as err:
        raise InputError(f"--chat-template: the template does not render a chat: {err}") from None
    # a template of a known family brings its end-of-turn token as a stop
    vocab = tokenizer.get_vocab()
    engine.stop_ids |= {vocab[s] for s in stop_strings(tokenizer) if s in vocab}


def _template_text(value: str, formats: dict[str, Any]) -> str:
    if value in formats:
        return formats[value].template
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    raise InputError(
        f"--chat-template {value!r}: not a file, a Jinja template or a format name "
        f"({', '.join(formats)})"
    )
