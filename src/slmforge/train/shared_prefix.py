"""One pass over a micro-batch's common opening: rows that start alike share its forward.

Chat rows open alike: the template's header and default system prompt, a data set's system
prompt, the tool definitions of tool-calling rows. Under the causal mask a position's hidden
states depend only on the tokens up to it, so those positions are the same in every row of a
micro-batch. The shared opening runs once (batch 1), its key/value cache is repeated to the
micro-batch, and each row's remainder runs on top of it, the way generation continues a prompt.
Backward sums every row's gradient into the one shared pass, so losses and gradients are the
plain forward's (the integration test compares them for each family).

It pays only when it saves more than it costs: the shared pass is a second forward and
backward over every weight, for a few tokens, and at a few tokens a product reads its weights
at memory speed instead of computing at full rate. On the `small` model (fp32, 1 thread) the
5-token chat header of 4 rows ran 4% slower shared (docs/benchmarks.md): hence
`MIN_SAVED_TOKENS`, the token passes a micro-batch must save before it is shared.
"""

from __future__ import annotations

from typing import Any

import torch

from slmforge.config.finetune import FinetuneConfig
from slmforge.train.kept_positions import LastLayerMlp, kept_only

MIN_SAVED_TOKENS = 64


def why_not_shared(
    cfg: FinetuneConfig, model: Any, distributed: bool, checkpointing: bool, select_logits: bool
) -> str | None:
    """Why this run cannot share openings (None: it can)."""
    if not cfg.share_prefix:
        return "--no-share-prefix"
    if cfg.packing:
        return "--packing (a packed row holds several examples)"
    if checkpointing:
        return "gradient checkpointing (transformers keeps no cache under it)"
    if distributed:
        return "several processes (DDP expects one forward per backward)"
    if not select_logits:
        return "the model's code does not select logits by position"
    config = getattr(model, "config", None)
    window = _sliding_window(config)
    if window is not None and window < cfg.max_seq_len:
        return f"a sliding window of {window} tokens, shorter than --max-seq-len"
    switch = _rope_switch(config)
    if switch is not None and switch < cfg.max_seq_len:
        return f"RoPE frequencies that change past {switch} tokens, within --max-seq-len"
    return None


def _rope_switch(config: Any) -> int | None:
    """Where `longrope` or `dynamic` RoPE changes its frequencies: transformers picks them from
    the longest position of each forward pass, so the opening alone and the whole row could
    get different ones past that length."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(params, dict):
        return None
    kinds = [params] if "rope_type" in params or "type" in params else list(params.values())
    for kind in kinds:
        name = (
            str(kind.get("rope_type") or kind.get("type") or "") if isinstance(kind, dict) else ""
        )
        if name == "longrope" or "dynamic" in name:
            original = kind.get("original_max_position_embeddings") or getattr(
                config, "original_max_position_embeddings", None
            )
            return int(original or getattr(config, "max_position_embeddings", 0))
    return None


def _sliding_window(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    kinds = getattr(config, "layer_types", None)
    if kinds is not None:
        return window if "sliding_attention" in kinds else None
    return None if getattr(config, "use_sliding_window", True) is False else window


def shared_length(rows: list[list[int]], keep: torch.Tensor) -> int:
    """How many leading positions a micro-batch runs once: the rows' common prefix, cut where
    any row scores a position (its logits are needed per row), and short of every row's end
    (each row keeps a remainder). 0 when sharing would not save `MIN_SAVED_TOKENS`."""
    if len(rows) < 2:
        return 0
    length = min(len(row) for row in rows) - 1
    first = rows[0]
    for position in range(length):
        if any(row[position] != first[position] for row in rows):
            length = position
            break
    scored = keep.any(dim=0).nonzero()
    if len(scored):
        length = min(length, int(scored[0]))
    return length if (len(rows) - 1) * length >= MIN_SAVED_TOKENS else 0


def shared_logits(
    model: Any,
    inputs: dict[str, torch.Tensor],
    keep: torch.Tensor,
    length: int,
    last_mlp: LastLayerMlp | None = None,
) -> torch.Tensor:
    """The logits at `keep`'s positions (row after row, as `logits_to_keep=keep` returns
    them) with the first `length` positions run once for the whole micro-batch. The opening
    keeps no logits, so with `last_mlp` its last-layer MLP runs on nothing."""
    ids, positions = inputs["input_ids"], inputs["position_ids"]
    nothing = torch.zeros(1, length, dtype=torch.bool, device=ids.device)
    with kept_only(last_mlp, nothing):
        opening = model(
            input_ids=ids[:1, :length],
            position_ids=positions[:1, :length],
            use_cache=True,
            logits_to_keep=nothing,
        )
    cache = opening.past_key_values
    cache.batch_repeat_interleave(ids.size(0))
    with kept_only(last_mlp, keep[:, length:]):
        rest = model(
            input_ids=ids[:, length:],
            position_ids=positions[:, length:],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep[:, length:],
        )
    return rest.logits
