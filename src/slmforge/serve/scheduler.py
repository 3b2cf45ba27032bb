"""Admission and concurrency: a bounded number of generations and a bounded queue. (The bridge
from the engines' blocking token streams to asyncio is `http/streams.py:iterate_in_thread`,
shared with the web app.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


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
