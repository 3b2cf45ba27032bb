"""Continuous batching for local engines: one scheduler thread decodes every running request
together, one forward pass per step, while each request streams from its own thread.

The engine contract does not change: `generate_ids(prompt, params, adapter) -> Iterator[Delta]`
may be called from several threads at once. Each call submits a `BatchedSequence` and reads
the tokens chosen for it from its own queue; the scheduler thread admits new sequences between
steps (a prefill pass each, which yields their first token), then runs one batched decode pass
for all of them. A sequence leaves the batch as soon as it ends (stop token, `max_tokens`, the
end of a JSON object) or its consumer stops listening (stop string, client gone), so a request
never waits for another one to finish: this is continuous batching, not static batches.

Tokens are chosen by each request's own `Sampler`, here in the scheduler thread, on the same
logits the request would get alone, so greedy output, seeded samples, log-probabilities and JSON
mode are what the one-request path gives. `BatchModel` is what an engine supplies: prefill one
sequence into a slot, one decode pass over many slots, free a slot.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from slmforge.errors import RunError
from slmforge.runtime.sampling import Sampled, Sampler

_END = object()


class BatchModel(Protocol):
    def open(self, prompt: list[int], adapter: str | None) -> tuple[Any, Any]:
        """Prefill `prompt` into a new slot; returns the slot and the logits of the prompt's
        last position. The slot grows as tokens are fed to it."""
        ...

    def step(self, slots: list[Any], tokens: list[int]) -> list[np.ndarray]:
        """Feed one token to each slot in one pass; returns each slot's next-token logits."""
        ...

    def close(self, slot: Any) -> None: ...

    def reset(self) -> None:
        """Forget every slot (after an unexpected error)."""
        ...


class BatchedSequence:
    """One request in the batch. The scheduler writes `Sampled` tokens to its queue; the
    request's thread reads them with `tokens()` and calls `cancel()` when it stops listening."""

    def __init__(
        self,
        prompt: list[int],
        sampler: Sampler,
        adapter: str | None,
        max_tokens: int,
        stop_ids: set[int],
    ) -> None:
        self.prompt, self.sampler, self.adapter = prompt, sampler, adapter
        self.max_tokens, self.stop_ids = max_tokens, stop_ids
        self.slot: Any = None
        self.produced = 0
        self.next_token = 0
        self.cancelled = False
        self._output: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def tokens(self) -> Iterator[Sampled]:
        while True:
            item = self._output.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled = True  # seen by the scheduler before its next step

    def put(self, item: Any) -> None:
        self._output.put(item)


class BatchScheduler:
    """Runs up to `max_batch` sequences together on `model`; more wait in a queue."""

    def __init__(self, model: BatchModel, max_batch: int) -> None:
        self.model = model
        self.max_batch = max_batch
        self.steps = 0  # batched decode passes run
        self.peak_batch = 0  # most sequences decoded in one pass
        self._cond = threading.Condition()
        self._pending: deque[BatchedSequence] = deque()
        self._running: list[BatchedSequence] = []  # touched by the scheduler thread only
        self._thread: threading.Thread | None = None
        self._held = False
        self._closed = False

    def submit(
        self,
        prompt: list[int],
        sampler: Sampler,
        adapter: str | None,
        max_tokens: int,
        stop_ids: set[int],
    ) -> BatchedSequence:
        sequence = BatchedSequence(prompt, sampler, adapter, max_tokens, stop_ids)
        with self._cond:
            if self._closed:
                raise RunError("the engine is closed")
            self._pending.append(sequence)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="slmforge-batch")
                self._thread.daemon = True
                self._thread.start()
            self._cond.notify_all()
        return sequence

    @contextmanager
    def held(self) -> Iterator[None]:
        """Admit no new sequences while inside (they queue up); they are admitted together on
        leaving. Lets tests and benchmarks start a known batch without relying on timing."""
        with self._cond:
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def wait_for_pending(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least `count` sequences wait for admission (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._pending) >= count, timeout)

    def close(self) -> None:
        """Stop the scheduler thread; sequences still queued or running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work)
                if self._closed:
                    break
                room = 0 if self._held else self.max_batch - len(self._running)
                admitted = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                self._iteration(admitted)
            except Exception as exc:  # never leave a request waiting on a dead thread
                for sequence in {*self._running, *admitted}:
                    sequence.slot = None  # reset() below frees every slot
                    self._finish(sequence, exc)
                self._running = []
                self.model.reset()
        closed = RunError("the engine was closed while generating")
        for sequence in [*self._running, *self._pending]:
            self._finish(sequence, closed)

    def _has_work(self) -> bool:
        return self._closed or bool(self._running) or (bool(self._pending) and not self._held)

    def _iteration(self, admitted: list[BatchedSequence]) -> None:
        """Drop cancelled sequences, prefill the admitted ones, then one decode pass for all."""
        for sequence in self._running:
            if sequence.cancelled:
                self._finish(sequence)
        running = [s for s in self._running if not s.cancelled]
        for sequence in admitted:
            if sequence.cancelled:
                continue
            try:
                sequence.slot, logits = self.model.open(sequence.prompt, sequence.adapter)
            except Exception as exc:  # handed to the request's thread, which raises it
                self._finish(sequence, exc)
                continue
            if self._emit(sequence, logits):
                running.append(sequence)
        self._running = running
        if not running:
            return
        try:
            logits = self.model.step([s.slot for s in running], [s.next_token for s in running])
        except Exception as exc:
            for sequence in running:
                self._finish(sequence, exc)
            self._running = []
            return
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(running))
        self._running = [s for s, row in zip(running, logits, strict=True) if self._emit(s, row)]

    def _emit(self, sequence: BatchedSequence, logits: Any) -> bool:
        """Choose the sequence's next token and hand it over; False when the sequence ended."""
        try:
            sampled = sequence.sampler.pick(logits)
        except Exception as exc:
            self._finish(sequence, exc)
            return False
        sequence.produced += 1
        sequence.put(sampled)
        ended = (
            sampled.token_id in sequence.stop_ids
            or sampled.ends
            or sequence.produced >= sequence.max_tokens
            or sequence.cancelled
        )
        if ended:
            self._finish(sequence)
            return False
        sequence.next_token = sampled.token_id
        return True

    def _finish(self, sequence: BatchedSequence, error: BaseException | None = None) -> None:
        if sequence.slot is not None:
            slot, sequence.slot = sequence.slot, None
            self.model.close(slot)
        sequence.put(_END if error is None else error)
