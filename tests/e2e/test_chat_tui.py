"""`slmforge chat` as a person uses it, in a pseudo-terminal (pexpect): streamed answers with
timings, commands, empty input, Ctrl-C stopping one answer while the chat goes on, Ctrl-C at
the prompt leaving; and piped input, one question a line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")  # a dev dependency; CI=true turns a skip into a failure

pytestmark = pytest.mark.integration

SLMFORGE = str(Path(sys.executable).with_name("slmforge"))
PROMPT = "> "
TIMINGS = re.compile(r"ttft \d+ ms, [\d.]+ tokens/s, \d+ tokens")
QUESTION = "What should I pack for a week in Lisbon?"
STOPPED = "(stopped; Ctrl-C again at the prompt exits)"
LONG = "Return a new list containing all items from the iterable in ascending order."


def spawn(*args: str, nice: int = 0) -> pexpect.spawn:
    """`slmforge chat ARGS` on a terminal; `nice` lowers its priority below the test's own."""
    command = ["nice", "-n", str(nice), SLMFORGE] if nice else [SLMFORGE]
    child = pexpect.spawn(
        command[0],
        [*command[1:], "chat", *args],
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 400),  # wide: no wrapped lines
        env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"},
        # a terminal's Ctrl-C, whatever this worker inherited: an ignored SIGINT passes through
        # exec, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.expect("/help lists commands")
    child.expect_exact(PROMPT)
    return child


def ask(child: pexpect.spawn, text: str) -> str:
    """Send a question; return what streamed before the timings line."""
    child.sendline(text)
    child.expect(TIMINGS)
    answer = child.before.split(text, 1)[-1]
    child.expect_exact(PROMPT)
    return answer.strip()


def test_questions_commands_and_adapters(llama_onnx: Path) -> None:
    child = spawn("--model", str(llama_onnx), "--timings", "--max-tokens", "12")
    try:
        base = ask(child, QUESTION)
        assert base

        child.sendline("")
        child.expect_exact("empty input: type a question, or /help for commands")
        child.expect_exact(PROMPT)

        child.sendline("/adapter")
        child.expect_exact("adapter: none (available: terse, travel)")
        child.sendline("/adapter nope")
        child.expect_exact("error: no adapter 'nope' (this model's adapters: terse, travel)")
        child.sendline("/adapter terse")
        child.expect_exact("adapter: terse")
        child.sendline("/reset")
        child.expect_exact("conversation cleared")
        terse = ask(child, QUESTION)
        assert terse and terse != base  # the same first question, answered by the adapter

        child.sendline("/system Answer in one word.")
        child.expect_exact("system message set")
        assert ask(child, "And for Porto?")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def _interrupt_an_answer(child: pexpect.spawn) -> bool:
    """Ask LONG and press Ctrl-C once the answer streams; False when the answer ended first
    (on a loaded machine a short answer can finish before the signal lands)."""
    child.sendline(LONG)
    child.expect_exact(LONG)  # the terminal's echo of the question
    child.expect(r"\w\w")  # the answer has started streaming
    child.sendintr()
    # the prompt counts at a line's start only: the JSON answer holds no raw newline, but it
    # may hold "> " (the tiny model writes docstrings, doctests included)
    return child.expect([re.escape(STOPPED), r"\n> "]) == 0


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(llama_onnx: Path, tmp_path: Path) -> None:
    # A JSON string of at least 6000 characters: the grammar forbids ending the answer early,
    # so it runs to --max-tokens (2000 tokens) unless Ctrl-C stops it. The tiny model writes
    # them in ~2 s, so on a loaded machine the chat runs at nice 19: the test, which sends
    # Ctrl-C as soon as the answer streams, gets the CPU first.
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    schema = tmp_path / "long.json"
    schema.write_text('{"type": "string", "minLength": 6000}')
    seen = []
    for _attempt in range(3):
        child = spawn(
            str(llama_onnx), "--max-tokens", "2000", "--chat-template", template,
            "--json-schema", str(schema), nice=19,
        )  # fmt: skip
        try:
            if not _interrupt_an_answer(child):
                seen.append(child.before[-200:])
                continue  # the answer ended before Ctrl-C: that Ctrl-C left the chat
            child.expect_exact(PROMPT)
            child.sendline("/adapter")  # still chatting
            child.expect_exact("adapter: none")
            child.expect_exact(PROMPT)
            child.sendline("/reset")
            child.expect_exact("conversation cleared")
            # the model answers again after a stopped generation
            assert _interrupt_an_answer(child), "the second answer ended before Ctrl-C"
            child.expect_exact(PROMPT)
            child.sendintr()  # Ctrl-C at the prompt leaves
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0
        return
    pytest.fail(f"three answers in a row ended before Ctrl-C reached them: {seen}")


def test_piped_questions_one_a_line(llama_onnx: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.jinja"
    template.write_text(
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    )
    command = [SLMFORGE, "chat", "--model", str(llama_onnx), "--adapter", "travel"]
    command += ["--max-tokens", "8"]
    command += ["--timings", "--chat-template", str(template)]
    result = subprocess.run(
        command,
        input=f"{QUESTION}\n\n/adapter terse\nAnd in Porto?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # stdout holds the two answers only (each ends with a newline; timings go to stderr)
    assert result.stdout.strip() and result.stdout.count("\n") >= 2
    assert not TIMINGS.search(result.stdout) and len(TIMINGS.findall(result.stderr)) == 2
    assert "adapter: terse" in result.stderr and "empty input" not in result.stderr

    bad = subprocess.run(
        [SLMFORGE, "chat", "--model", str(llama_onnx), "--chat-template", "{% for %}"],
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --chat-template: the template does not render a chat")


def test_adapter_folders_loaded_by_name(tiny_llama: Path, llama_adapters: dict[str, Path]) -> None:
    loads = [f"--adapter={name}={folder}" for name, folder in llama_adapters.items()]
    result = subprocess.run(
        [SLMFORGE, "chat", str(tiny_llama), *loads, "--adapter", "terse", "--max-tokens", "6"],
        input=f"{QUESTION}\n/adapter travel\n{QUESTION}\n/adapter none\n{QUESTION}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") >= 3
    assert "adapter: travel" in result.stderr and "adapter: none (the base model)" in result.stderr


def test_tools_calls_and_results_and_json_schema_piped(llama_onnx: Path, tmp_path: Path) -> None:
    """`--tools` with a named function: the call is shown, `/tool RESULT` answers it and the
    model goes on; `--json-schema` makes every answer JSON that validates."""
    import json

    from jsonschema import validate

    tools = tmp_path / "tools.json"
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    tools.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "parameters": schema}}]))  # fmt: skip
    command = [SLMFORGE, "chat", "--model", str(llama_onnx), "--max-tokens", "120"]
    result = subprocess.run(
        [*command, "--tools", str(tools), "--tool-choice", "get_weather"],
        input='Weather in Oslo?\n/tool {"temp_c": 3}\n', capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = re.search(r"-> get_weather\((\{.*?\})\)  \[call_\w+; reply with /tool\]", result.stdout)
    assert shown, result.stdout
    validate(json.loads(shown.group(1)), schema)
    assert result.stdout.count("-> get_weather(") == 2  # still forced after the result
    (tmp_path / "trip.json").write_text(json.dumps(schema))
    structured = subprocess.run(
        [*command, "--json-schema", str(tmp_path / "trip.json")], input="Where to?\nAnd then?\n",
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert structured.returncode == 0, structured.stderr
    for line in structured.stdout.strip().splitlines():
        validate(json.loads(line), schema)
    bad = subprocess.run([*command, "--tool-choice", "book"], input="hi\n", capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--tool-choice needs --tools" in bad.stderr
