"""Offline preference pairs from the travel sample (`slmforge data sample --kind preference`):
each prompt's own answer preferred, a different row's answer not. A model tuned on them learns
to answer the question asked rather than a plausible travel answer to another one, which the
preference tests and the demo measure as held-out reward accuracy.
"""

from __future__ import annotations

import random
from typing import Any

from slmforge.data.sample import sample_pairs


def preference_rows(count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Preference pairs in OpenAI's DPO rows: each travel prompt with its own answer preferred
    and a different row's answer (picked with `seed`) not preferred. One row per travel pair
    by default; a larger `count` repeats prompts with other non-preferred answers."""
    pairs = sample_pairs()
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    rows = []
    for k in range(count or len(pairs)):
        index = order[k % len(pairs)]
        other = rng.randrange(len(pairs) - 1)
        other += other >= index  # any row but this one
        pair = pairs[index]
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": pair["prompt"]}]},
                "preferred_output": [{"role": "assistant", "content": pair["response"]}],
                "non_preferred_output": [
                    {"role": "assistant", "content": pairs[other]["response"]}
                ],
            }
        )
    return rows
