"""The continuous-batching scheduler on a fake model: who joins which pass, when a sequence
ends, and where errors go (the real ONNX model: tests/integration/test_serve_batching.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmforge.errors import RunError
from slmforge.runtime.batching import BatchScheduler
from slmforge.runtime.engine import GenParams
from slmforge.runtime.onnx_batch import batch_support
from slmforge.runtime.sampling import Sampler

VOCAB = 16
STOP = 15


def one_hot(token: int) -> np.ndarray:
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[token % VOCAB] = 1.0
    return logits


class CountingModel:
    """Next token = last token + 1; prompts starting with 99 fail to prefill."""

    def __init__(self, fail_step: bool = False) -> None:
        self.open_slots: set[int] = set()
        self.batches: list[int] = []
        self.fail_step = fail_step
        self._next = 0

    def open(self, prompt, adapter):
        if prompt[0] == 99:
            raise ValueError("cannot prefill this one")
        self._next += 1
        self.open_slots.add(self._next)
        return self._next, one_hot(prompt[-1] + 1)

    def step(self, slots, tokens):
        assert set(slots) == self.open_slots  # every open sequence takes part in every pass
        if self.fail_step:
            raise RuntimeError("the pass failed")
        self.batches.append(len(slots))
        return [one_hot(token + 1) for token in tokens]

    def close(self, slot):
        self.open_slots.remove(slot)

    def reset(self):
        self.open_slots.clear()


def submit(scheduler, prompt, max_tokens=5):
    return scheduler.submit(prompt, Sampler(GenParams()), None, max_tokens, {STOP})


def ids(sequence) -> list[int]:
    return [sampled.token_id for sampled in sequence.tokens()]


def test_held_sequences_decode_together_and_leave_when_done() -> None:
    model = CountingModel()
    scheduler = BatchScheduler(model, max_batch=4)
    with scheduler.held():
        short, long = submit(scheduler, [1], 2), submit(scheduler, [3], 6)
        stopping = submit(scheduler, [12], 10)  # 13, 14, 15 = stop
        assert scheduler.wait_for_pending(3, timeout=10)
    assert ids(short) == [2, 3]
    assert ids(long) == [4, 5, 6, 7, 8, 9]
    assert ids(stopping) == [13, 14, 15]  # the stop token is handed over, then it ends
    scheduler.close()
    assert model.batches[0] == 3 and scheduler.peak_batch == 3
    assert model.batches[-1] == 1  # the long one runs on alone
    assert not model.open_slots  # every slot was freed


def test_max_batch_bounds_a_pass_and_the_rest_wait() -> None:
    model = CountingModel()
    scheduler = BatchScheduler(model, max_batch=2)
    with scheduler.held():
        sequences = [submit(scheduler, [i], 4) for i in range(5)]
        assert scheduler.wait_for_pending(5, timeout=10)
    assert [ids(s) for s in sequences] == [[i + 1, i + 2, i + 3, i + 4] for i in range(5)]
    scheduler.close()
    assert max(model.batches) == 2 and not model.open_slots


def test_a_failed_prefill_fails_only_its_request() -> None:
    model = CountingModel()
    scheduler = BatchScheduler(model, max_batch=4)
    with scheduler.held():
        bad, good = submit(scheduler, [99]), submit(scheduler, [1], 3)
        assert scheduler.wait_for_pending(2, timeout=10)
    with pytest.raises(ValueError, match="cannot prefill"):
        ids(bad)
    assert ids(good) == [2, 3, 4]
    scheduler.close()


def test_a_failed_pass_fails_its_batch_and_frees_the_slots() -> None:
    model = CountingModel(fail_step=True)
    scheduler = BatchScheduler(model, max_batch=4)
    first, second = submit(scheduler, [1]), submit(scheduler, [2])
    for sequence in (first, second):
        with pytest.raises(RuntimeError, match="the pass failed"):
            ids(sequence)
    scheduler.close()
    assert not model.open_slots


def test_a_cancelled_sequence_is_dropped_before_the_next_pass() -> None:
    model = CountingModel()
    scheduler = BatchScheduler(model, max_batch=4)
    cancelled = submit(scheduler, [0], max_tokens=10_000)
    tokens = cancelled.tokens()
    next(tokens)
    cancelled.cancel()
    assert ids(submit(scheduler, [5], 3)) == [6, 7, 8]
    scheduler.close()
    assert not model.open_slots


def test_close_ends_waiting_requests_with_an_error() -> None:
    scheduler = BatchScheduler(CountingModel(), max_batch=1)
    with scheduler.held():
        waiting = submit(scheduler, [1])
        scheduler.close()
    with pytest.raises(RunError, match="closed"):
        ids(waiting)
    with pytest.raises(RunError, match="closed"):
        submit(scheduler, [1])


@pytest.mark.parametrize(
    ("decoder", "reason"),
    [
        ({"session_options": {"provider_options": [{"cuda": {}}]}}, "built for cuda"),
        ({"inputs": {"input_ids": "input_ids", "position_ids": "position_ids"}}, "position_ids"),
    ],
)
def test_models_that_cannot_batch_say_why(decoder: dict, reason: str, tmp_path: Path) -> None:
    genai = {"model": {"decoder": {"filename": "model.onnx", **decoder}}}
    assert reason in batch_support(tmp_path, genai)


def test_an_unexpected_error_ends_every_request_instead_of_hanging() -> None:
    class BrokenClose(CountingModel):
        broken = True

        def close(self, slot):
            if self.broken:
                self.broken = False
                raise OSError("close broke")
            super().close(slot)

    model = BrokenClose()
    scheduler = BatchScheduler(model, max_batch=4)
    with scheduler.held():
        first, second = submit(scheduler, [1], 2), submit(scheduler, [5], 8)
        assert scheduler.wait_for_pending(2, timeout=10)
    for sequence in (first, second):
        with pytest.raises(OSError, match="close broke"):
            ids(sequence)
    assert ids(submit(scheduler, [14], 3)) == [15]  # the stop token: later requests work
    scheduler.close()
    assert not model.open_slots
