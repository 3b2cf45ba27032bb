"""Timings count tokens, not text: a first token that decodes to nothing (a byte-fallback piece,
a special token, an id past the tokenizer) still sets the time to first token and tokens/s.
A scripted clock makes every time exact, so nothing here depends on speed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from slmforge.app.tui import ChatIO, ChatSession, run_chat
from slmforge.runtime import engine as engine_module
from slmforge.runtime.engine import (
    BaseEngine,
    Delta,
    GenParams,
    Message,
    Usage,
    complete,
    measure,
    token_deltas,
)
from slmforge.runtime.sampling import Sampled, TokenLogprob

EOS = 0
SILENT = 99  # decodes to nothing, like an id past a real checkpoint's tokenizer


class ByteTokenizer:
    """Ids 65-90 are the letters A-Z; every other id decodes to nothing."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if 65 <= i <= 90)


class TokenEngine(BaseEngine):
    """A local engine's stream: `ids` sampled one by one through `token_deltas`."""

    name = "tokens"

    def __init__(self, ids: list[int], logprobs: bool = False) -> None:
        self.ids = ids
        self.logprobs = logprobs

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        sampled = (Sampled(i, TokenLogprob(i, -1.0) if self.logprobs else None) for i in self.ids)
        return token_deltas(sampled, ByteTokenizer(), {EOS}, params, prompt_tokens=3)


@pytest.fixture
def clock(monkeypatch) -> None:
    """`measure` reads 0, 1, 2, ...: start, then one tick per delta, then the end."""
    ticks = itertools.count()
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))


def test_a_textless_first_token_sets_time_to_first_token(clock) -> None:
    # Two silent tokens, then "HI": the first token came at tick 1, not at the first text (3).
    result = complete(TokenEngine([SILENT, SILENT, 72, 73]), [], GenParams(max_tokens=4))
    assert result.text == "HI" and result.usage == Usage(3, 4)
    assert result.timings.ttft_s == 1
    assert result.timings.inter_token_s == 1  # one tick between each of the four tokens
    # 3 tokens after the first, over the ticks from the first token (1) to the end (6)
    assert result.timings.tokens_per_s == pytest.approx(3 / 5)


def test_an_answer_without_text_still_has_timings(clock) -> None:
    deltas = list(TokenEngine([SILENT] * 5).chat([], GenParams(max_tokens=5)))
    assert len(deltas) == 1, "empty deltas are not passed on"
    timings = deltas[0].timings
    assert deltas[0].finish_reason == "length" and deltas[0].usage == Usage(3, 5)
    assert timings.ttft_s == 1 and timings.tokens_per_s == pytest.approx(4 / 6)


def test_a_stop_token_first_is_timed(clock) -> None:
    result = complete(TokenEngine([EOS, 72]), [], GenParams(max_tokens=4))
    assert result.text == "" and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 1
    assert result.timings.ttft_s == 1 and result.timings.tokens_per_s is None  # no second token


def test_logprobs_of_textless_tokens_travel_with_the_next_text(clock) -> None:
    deltas = list(TokenEngine([SILENT, 72, SILENT], logprobs=True).chat([], GenParams()))
    *texts, final = deltas
    assert [d.text for d in texts] == ["H", ""]
    assert [[e.token_id for e in d.logprobs] for d in texts] == [[SILENT, 72], [SILENT]]
    assert final.usage == Usage(3, 3)


def test_text_chunks_are_timed_where_no_tokens_are_reported(clock) -> None:
    # A remote engine sees text chunks only: the first chunk is the first token.
    chunks = [Delta(), Delta(text="Hel"), Delta(text="lo"), Delta("", "stop", Usage(3, 4))]
    *texts, final = list(measure(iter(chunks)))
    assert [d.text for d in texts] == ["Hel", "lo"]
    assert final.timings.ttft_s == 2 and final.timings.inter_token_s == 1
    assert final.timings.tokens_per_s == pytest.approx(3 / 3)


def test_chat_timings_report_a_textless_answer(clock) -> None:
    out: list[str] = []
    notes: list[str] = []
    feed = iter(["hello"])
    io = ChatIO(lambda: next(feed, None), out.append, notes.append)
    session = ChatSession(TokenEngine([SILENT] * 8), GenParams(max_tokens=8))
    run_chat(session, io, timings=True)
    assert "".join(out) == "\n"
    assert notes == [
        "(no text: 8 tokens generated, none that decodes to text)",
        "ttft 1000 ms, 0.8 tokens/s, 8 tokens",
    ]
