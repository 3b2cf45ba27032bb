"""The runner's bounded worker pool: never more requests in flight than --concurrency."""

from __future__ import annotations

import threading

from slmforge.evaluate.runner import bounded


def test_bounded_pool_keeps_at_most_workers_in_flight():
    workers, items = 3, list(range(12))
    lock = threading.Lock()
    full = threading.Event()
    state = {"in_flight": 0, "most": 0, "done": []}

    def work(item: int) -> None:
        with lock:
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
            if state["in_flight"] == workers:
                full.set()
        full.wait(timeout=5)  # the first ones wait until the pool is full: overlap is certain
        with lock:
            state["in_flight"] -= 1
            state["done"].append(item)

    bounded("test", items, work, workers, total=len(items))
    assert state["most"] == workers
    assert sorted(state["done"]) == items
