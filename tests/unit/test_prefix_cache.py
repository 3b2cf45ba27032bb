"""The prefix cache's bookkeeping: chained block keys, adapters apart, the last token always
computed, the memory bound (least recently used out) and its counters."""

from __future__ import annotations

import numpy as np

from slmforge.runtime.prefix_cache import PrefixCache, concatenated

BLOCK = 4


def export_positions(start: int, end: int) -> list[np.ndarray]:
    """Two layers' keys and values whose entries are their positions, [heads=1, n, head=2]."""
    positions = np.arange(start, end, dtype=np.float32)[None, :, None].repeat(2, axis=2)
    return [positions.copy() for _ in range(4)]


def test_a_prompt_finds_the_blocks_a_longer_one_stored_and_no_others() -> None:
    cache = PrefixCache(1 << 20, block=BLOCK)
    prompt = list(range(11))  # full blocks that leave the last token out: 0-3, 4-7
    assert cache.lookup(None, prompt) == []
    cache.store(None, prompt, 0, export_positions)
    assert cache.stats.blocks == 2 and cache.stats.misses == 2
    again = cache.lookup(None, [*range(9), 99])  # same first 8 tokens
    assert len(again) == 2
    layers = concatenated(again, axis=1)
    assert layers[0][0, :, 0].tolist() == list(range(8))
    assert cache.lookup(None, [1, *range(1, 11)]) == []  # the chain starts at the first token
    assert cache.lookup("travel", prompt) == []  # another adapter, other keys and values
    assert len(cache.lookup(None, list(range(9)))) == 2
    assert len(cache.lookup(None, list(range(8)))) == 1  # the last token is always computed
    assert cache.stats.hits == 2 + 2 + 1 and cache.stats.reused_tokens == 5 * BLOCK


def test_memory_stays_within_the_bound_least_recently_used_first() -> None:
    one_block = sum(a.nbytes for a in export_positions(0, BLOCK))
    cache = PrefixCache(2 * one_block, block=BLOCK)
    a, b, c = ([start, *range(start + 1, start + BLOCK + 1)] for start in (0, 100, 200))
    cache.store(None, a, 0, export_positions)
    cache.store(None, b, 0, export_positions)
    assert len(cache.lookup(None, a)) == 1  # a is now the most recently used
    cache.store(None, c, 0, export_positions)  # over the bound: b goes
    assert cache.stats.bytes <= 2 * one_block and cache.stats.evicted == 1
    assert [len(cache.lookup(None, p)) for p in (a, b, c)] == [1, 0, 1]
