"""Stand-in engines and filters for routing tests: scripted answers, failures, stalls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Usage
from slmforge.safety.verdicts import FilterVerdict


class Scripted(BaseEngine):
    """Says `words`, one delta each (with `logprob` per word when asked); may fail before
    (`fail`) or after `fail_after` words, wait at `gate_at` until the gate opens, or finish with
    `finish` (e.g. content_filter, as a server with a filter does)."""

    def __init__(self, name, words="a b c", logprob=-0.1, fail=None, fail_after=None,
                 gate_at=None, finish="stop", adapters=()) -> None:  # fmt: skip
        self.name = name
        self.words = words.split()
        self.logprob = logprob
        self.fail, self.fail_after, self.gate_at, self.finish = fail, fail_after, gate_at, finish
        self.gate = threading.Event()
        self.calls: list[tuple[list, GenParams, str | None]] = []
        self._adapters = list(adapters)

    def adapters(self) -> list[str]:
        return self._adapters

    def prompt_ids(self, messages) -> list[int]:
        return [0] * sum(len(m["content"].split()) for m in messages)

    def generate(self, messages, params, adapter=None) -> Iterator[Delta]:
        self.calls.append((messages, params, adapter))
        for i, word in enumerate(self.words):
            if i == self.gate_at:
                self.gate.wait(30)
            if self.fail is not None and i == (self.fail_after or 0):
                raise self.fail
            entry = SimpleNamespace(logprob=self.logprob) if params.logprobs else None
            yield Delta(text=word if i == 0 else " " + word, logprobs=[entry] if entry else None)
        yield Delta(finish_reason=self.finish, usage=Usage(3, len(self.words)))


class Blocking:
    """A content filter that blocks prompts or answers containing `word`."""

    name = "test"

    def __init__(self, word: str) -> None:
        self.word = word

    def check_input(self, messages) -> FilterVerdict:
        text = " ".join(m["content"] for m in messages)
        return FilterVerdict(blocked=self.word in text, reason=f"{self.word} is blocked")

    def check_output(self, text: str) -> FilterVerdict:
        return FilterVerdict(blocked=self.word in text, reason=f"{self.word} is blocked")
