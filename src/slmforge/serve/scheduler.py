"""Admission and concurrency: a bounded number of generations, a bounded queue, and a bridge
from the engines' blocking token streams to asyncio that stops generating when nobody listens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows (HTTP 429)."""


class Scheduler:
    def __init__(self, max_concurrency: int, max_queue: int, on_change: Callable[[], None]):
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.waiting = 0
        self.running = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        self._on_change = on_change

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot; raises QueueFull instead of waiting in a full queue."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull
        self.waiting += 1
        self._on_change()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self._on_change()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._on_change()


_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in its own thread and yield its items here.

    When the consumer stops early (the client disconnected, or the task was cancelled) the
    thread is told to stop and closes the iterator at the next item, which ends the generation
    and releases the engine.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: Any, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone; nobody is listening
            stop.set()

    def produce() -> None:
        try:
            iterator = make()
            try:
                for item in iterator:
                    if stop.is_set():
                        break
                    put(None, item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            put(_END, None)
        except BaseException as exc:  # re-raised in the consumer
            put(exc, None)

    threading.Thread(target=produce, name="slmforge-generate", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind is _END:
                return
            if kind is not None:
                raise kind
            yield value
    finally:
        stop.set()
