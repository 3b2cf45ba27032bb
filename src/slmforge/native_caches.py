"""Bound the per-shape caches of oneDNN, which computes bf16 matrix products on CPUs.

oneDNN builds (JIT-compiles) one primitive per matrix shape and keeps up to 1024 of them; the
ideep layer above it keeps its own 1024-entry cache. Training meets a new shape with almost every
micro-batch (rows of another length, another count of scored positions), and each entry holds
about a megabyte, so a bf16 LoRA run on the `small` model grew from 0.82 to 1.6 GiB over 100
steps while fp32 (MKL, no such caches) stayed flat. 64 entries of each hold one step's working
set (every layer repeats the same shapes): memory stayed flat and steps were no slower
(docs/benchmarks.md). Both libraries read these variables once, at their first product, so this
runs before any model work; a value the user set wins.
"""

from __future__ import annotations

import os

CACHE_ENTRIES = 64
_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_native_caches(entries: int = CACHE_ENTRIES) -> None:
    """Cap oneDNN's and ideep's shape caches at `entries`, unless the environment says."""
    for name in _VARIABLES:
        os.environ.setdefault(name, str(entries))
