"""A bridge from a blocking iterator (an engine's token stream) to asyncio that stops the
iterator when nobody listens: both servers (`serve`, the web app) stream through it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

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
