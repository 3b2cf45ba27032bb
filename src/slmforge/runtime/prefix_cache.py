"""A prefix cache for local engines: the keys and values of a prompt's leading blocks, kept so
that the next request starting with the same tokens (a system prompt, tool definitions, few-shot
examples) skips their prefill.

As in vLLM's automatic prefix caching, a prompt is cut into blocks of `block` tokens and each
full block is keyed by a hash chained over every token before it (and the adapter: the same
tokens under another adapter have other keys and values), so a block is found only by a prompt
that matches it from the first token on. Blocks are stored as the engine's per-layer key and
value arrays for those positions; memory is bounded (`max_bytes`), least recently used blocks go
first. The last prompt token is always computed, since its logits are needed.

An engine calls `lookup` before its prefill (and loads what it returns into its cache) and
`store` after it; the counters feed the server's `/metrics`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BLOCK = 16
Layers = list[Any]  # per layer and kind (key, value, key, value, ...): arrays over block positions


@dataclass
class PrefixStats:
    hits: int = 0  # prompt blocks found in the cache
    misses: int = 0  # full prompt blocks that had to be computed
    reused_tokens: int = 0
    evicted: int = 0
    bytes: int = 0
    blocks: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, block: int = DEFAULT_BLOCK) -> None:
        self.max_bytes, self.block = max_bytes, block
        self.stats = PrefixStats()
        self._blocks: OrderedDict[bytes, tuple[Layers, int]] = OrderedDict()
        self._lock = threading.Lock()

    def keys(self, adapter: str | None, prompt: Sequence[int]) -> list[bytes]:
        """The chained key of every full block of `prompt` that leaves its last token out."""
        keys, parent = [], hashlib.blake2b((adapter or "").encode(), digest_size=16).digest()
        for start in range(0, len(prompt) - 1 - self.block + 1, self.block):
            block = np.asarray(prompt[start : start + self.block], dtype=np.int64).tobytes()
            parent = hashlib.blake2b(parent + block, digest_size=16).digest()
            keys.append(parent)
        return keys

    def lookup(self, adapter: str | None, prompt: Sequence[int]) -> list[Layers]:
        """The cached blocks that open `prompt`, in order (they cover `len(result) * block`
        tokens); counts hits and misses."""
        keys = self.keys(adapter, prompt)
        found: list[Layers] = []
        with self._lock:
            for key in keys:
                entry = self._blocks.get(key)
                if entry is None:
                    break
                self._blocks.move_to_end(key)
                found.append(entry[0])
            self.stats.hits += len(found)
            self.stats.misses += len(keys) - len(found)
            self.stats.reused_tokens += len(found) * self.block
        return found

    def store(
        self,
        adapter: str | None,
        prompt: Sequence[int],
        start_block: int,
        export: Callable[[int, int], Layers],
    ) -> None:
        """Keep the prompt's full blocks from `start_block` on; `export(start, end)` copies the
        engine's keys and values of those positions."""
        for index, key in enumerate(self.keys(adapter, prompt)):
            if index < start_block or key in self._blocks:
                continue
            layers = export(index * self.block, (index + 1) * self.block)
            size = sum(int(getattr(array, "nbytes", 0)) for array in layers)
            if size > self.max_bytes:
                return
            with self._lock:
                self._blocks[key] = (layers, size)
                self.stats.bytes += size
                self._evict()

    def _evict(self) -> None:
        while self.stats.bytes > self.max_bytes and self._blocks:
            _, (_, size) = self._blocks.popitem(last=False)
            self.stats.bytes -= size
            self.stats.evicted += 1
        self.stats.blocks = len(self._blocks)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.stats.bytes, self.stats.blocks = 0, 0


def concatenated(blocks: list[Layers], axis: int) -> Layers:
    """One array (numpy, or torch for the PyTorch engine) per layer and kind spanning all
    `blocks`, joined on the position axis."""
    columns = list(zip(*blocks, strict=True))
    if columns and not isinstance(columns[0][0], np.ndarray):
        import torch

        return [torch.cat(parts, dim=axis) for parts in columns]
    return [np.concatenate(parts, axis=axis) for parts in columns]
