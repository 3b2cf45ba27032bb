"""Offline preference pairs from the travel sample (`slmforge data sample --kind preference`):
each prompt's own answer preferred, a different row's answer not. The non-preferred answers come
from a few rows set aside whose answers are never preferred (like a weak model's handful of
canned answers): were every answer preferred for its own prompt and rejected for others, each
answer would be pushed up and down alike, and only matching an answer to its question would be
left to learn, which a small model learns slowly (DPO on the 2-layer test model: ~0.7 held-out
reward accuracy after 150 steps, against 1.0 after 8 on these pairs).
"""

from __future__ import annotations

import random
from typing import Any

from slmforge.data.sample import sample_pairs

NON_PREFERRED_POOL = 10  # rows set aside whose answers are the non-preferred ones


def preference_rows(count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Preference pairs in OpenAI's DPO rows: each travel prompt with its own answer preferred
    and the answer of one of `NON_PREFERRED_POOL` set-aside rows (picked with `seed`) not.
    One row per remaining travel pair by default; a larger `count` repeats prompts with other
    non-preferred answers."""
    pairs = sample_pairs()
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    pool, prompts = order[:NON_PREFERRED_POOL], order[NON_PREFERRED_POOL:]
    rows = []
    for k in range(count or len(prompts)):
        pair = pairs[prompts[k % len(prompts)]]
        other = rng.choice(pool)
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
