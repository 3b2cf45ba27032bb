"""A stand-in engine that says what a test scripts, wrapped around a real tiny model.

A tiny random-ish model never writes harmful text on purpose, so the safety tests need a
generation that does: `ScriptedEngine` keeps the real engine's tokenizer, chat template and
context checks (everything the server needs before generating) and replaces only
`generate_ids`, yielding the scripted answer word by word. With `script=None` it echoes the
last user message of the prompt (an "unsafe model" that repeats whatever it is asked).
`gate_after=N` makes it wait after N words until the test opens the gate, so a test can see
that a filtered stream ended while the engine was still generating.
"""

from __future__ import annotations

import threading

from slmforge.runtime.engine import Delta, Usage


class ScriptedEngine:
    def __init__(self, engine, script: str | None = None, gate_after: int | None = None) -> None:
        self.engine = engine
        self.script = script
        self.gate_after = gate_after
        self.gate = threading.Event()
        self.produced = 0
        self.finished = False
        self.closed = threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _answer(self, prompt: list[int]) -> str:
        if self.script is not None:
            return self.script
        text = self.engine.tokenizer.decode(prompt, skip_special_tokens=True)
        # the last user turn of the rendered chat template ("...user\n\nTEXTassistant\n\n")
        last_turn = text.rpartition("user\n\n")[2]
        return last_turn.rpartition("assistant")[0].strip() or last_turn.strip()

    def generate_ids(self, prompt, params, adapter=None):
        words = self._answer(prompt).split(" ")

        def run():
            try:
                for i, word in enumerate(words):
                    if i == self.gate_after:  # tests open the gate; the timeout is a backstop
                        self.gate.wait(300)  # long enough for a slow content filter under load
                    self.produced += 1
                    yield Delta(text=word if i == 0 else " " + word)
                self.finished = True
                usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(words))
                yield Delta(finish_reason="stop", usage=usage)
            finally:
                self.closed.set()

        return run()
