"""The terminal chat's session and loop (`slmforge.app.tui`) with a scripted engine: commands,
empty input, errors in interactive and piped use, and a stopped answer."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from slmforge.app.tui import ChatIO, ChatSession, run_chat, timings_line
from slmforge.errors import InputError, RemoteError
from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Message, Usage


class Scripted(BaseEngine):
    """Answers "echo: QUESTION [ADAPTER]" word by word; `interrupt_after` raises
    KeyboardInterrupt (as Ctrl-C would) after that many words; `fail` raises it."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple[list[Message], str | None]] = []
        self.interrupt_after: int | None = None
        self.fail: Exception | None = None
        self.closed = 0

    def adapters(self) -> list[str]:
        return ["travel", "terse"]

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        self.calls.append((messages, adapter))
        if self.fail is not None:
            raise self.fail
        words = f"echo: {messages[-1]['content']} [{adapter}]".split()
        try:
            for i, word in enumerate(words):
                if self.interrupt_after is not None and i == self.interrupt_after:
                    raise KeyboardInterrupt
                yield Delta(text=word + " ")
            yield Delta(finish_reason="stop", usage=Usage(3, len(words)))
        finally:
            self.closed += 1


def run(engine: Scripted, lines: list[str], interactive: bool = True, **kw) -> tuple[str, str]:
    feed = iter(lines)
    out: list[str] = []
    notes: list[str] = []
    io = ChatIO(lambda: next(feed, None), out.append, notes.append, interactive)
    run_chat(ChatSession(engine, GenParams(max_tokens=16), **kw), io, timings=True)
    return "".join(out), "\n".join(notes)


def test_questions_stream_with_history_and_timings() -> None:
    engine = Scripted()
    out, notes = run(engine, ["hello", "", "again"], system="Be brief.")
    assert out == "echo: hello [None] \necho: again [None] \n"
    assert "empty input: type a question" in notes
    assert len(re.findall(r"^ttft \d+ ms.*, \d+ tokens$", notes, re.MULTILINE)) == 2
    messages, _ = engine.calls[-1]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "echo: hello [None] "


def test_commands_switch_adapter_system_and_reset() -> None:
    engine = Scripted()
    lines = ["/adapter", "/adapter travel", "q1", "/adapter nope", "/system Be kind.", "/reset"]
    out, notes = run(engine, [*lines, "q2", "/adapter none", "q3", "/exit", "never asked"])
    assert "adapter: none (available: travel, terse)" in notes
    assert "error: no adapter 'nope' (this model's adapters: travel, terse)" in notes
    assert "conversation cleared" in notes
    assert out.splitlines() == ["echo: q1 [travel] ", "echo: q2 [travel] ", "echo: q3 [None] "]
    messages, _ = engine.calls[1]
    assert messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "q2"},
    ]
    assert len(engine.calls) == 3


def test_unknown_commands_and_slash_questions() -> None:
    engine = Scripted()
    out, notes = run(engine, ["/adaptr travel", "/etc/hosts is what?"])
    assert "error: unknown command /adaptr; commands: /reset" in notes
    assert out == "echo: /etc/hosts is what? [None] \n"


def test_ctrl_c_stops_one_answer_and_the_chat_goes_on() -> None:
    engine = Scripted()
    engine.interrupt_after = 2
    feed = iter(["first", "second"])
    out: list[str] = []
    notes: list[str] = []

    def read() -> str | None:
        line = next(feed, None)
        if line == "second":
            engine.interrupt_after = None
        return line

    session = ChatSession(engine, GenParams())
    run_chat(session, ChatIO(read, out.append, notes.append, True))
    assert "".join(out) == "echo: first \necho: second [None] \n"
    assert "(stopped; Ctrl-C again at the prompt exits)" in notes
    assert engine.closed == 2
    # what was shown of the stopped answer stays in the conversation
    assert session.history[1] == {"role": "assistant", "content": "echo: first "}


def test_ctrl_c_at_the_prompt_ends_the_chat() -> None:
    def read() -> str | None:
        raise KeyboardInterrupt

    run_chat(ChatSession(Scripted(), GenParams()), ChatIO(read, print, print, True))


def test_errors_go_on_interactively_and_stop_a_script() -> None:
    engine = Scripted()
    engine.fail = RemoteError("the endpoint is down (HTTP 503)", status=503)
    out, notes = run(engine, ["q1", "/adapter nope", "q2"])
    assert notes.count("error: the endpoint is down") == 2 and out == ""
    with pytest.raises(RemoteError):
        run(engine, ["q1"], interactive=False)
    with pytest.raises(InputError, match="no adapter 'nope'"):
        run(Scripted(), ["/adapter nope"], interactive=False)


def test_timings_line_without_a_final_delta() -> None:
    assert timings_line(None) == "no timings"
