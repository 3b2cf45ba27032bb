"""Work only where the loss reads: the scored positions' logits need less than a full forward.

A training forward asks for logits at the scored positions only (`logits_to_keep`). Under the
causal mask two more parts of the usual forward then feed nothing the loss reads:

- columns after a micro-batch's last scored position (each row's final token, which predicts
  nothing, and the padding after it): no earlier position attends to them, so they are dropped;
- the last decoder layer's MLP at unscored positions: past the last layer only the final norm
  and the LM head read a position, and they read the kept ones. Keys and values of every
  position are still computed (later scored positions attend to them); the MLP, about three
  quarters of a layer's products, runs on the kept positions and the rest of its output is 0.

Both are exact: losses and gradients are the full forward's to float rounding (the integration
test compares them). On the `small` model (12 layers, 59% of the sample's positions scored) they
save about 4% of a LoRA step (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

# config fields that mark a mixture-of-experts MLP: its block returns router logits beside the
# hidden states, per position, which the model gathers over all positions
_EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def trim_columns(
    inputs: dict[str, torch.Tensor], keep: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`inputs` (batch x seq tensors) and `keep` without the columns after the last kept one."""
    kept = keep.any(dim=0).nonzero()
    if not len(kept) or int(kept[-1]) + 1 == keep.size(1):
        return inputs, keep
    width = int(kept[-1]) + 1
    return {name: value[:, :width] for name, value in inputs.items()}, keep[:, :width]


class LastLayerMlp:
    """The last decoder layer's MLP, run only at the positions `only` names while it is open.

    The module's own `forward` is wrapped on the instance, so parameter names, adapters, hooks
    and state dicts stay as they were; outside `only` (generation, a caller without kept
    positions) it runs as before."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        self.keep: torch.Tensor | None = None
        self._forward = mlp.forward
        mlp.forward = self._kept_forward

    @contextmanager
    def only(self, keep: torch.Tensor) -> Iterator[None]:
        self.keep = keep
        try:
            yield
        finally:
            self.keep = None

    def _kept_forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        keep = self.keep
        if keep is None or hidden.dim() != 3 or tuple(keep.shape) != tuple(hidden.shape[:2]):
            return self._forward(hidden, *args, **kwargs)
        keep = keep.to(hidden.device)
        # one row of kept positions keeps the module's batch x seq x hidden layout
        out = self._forward(hidden[keep].unsqueeze(0), *args, **kwargs).squeeze(0)
        return out.new_zeros(hidden.shape[:2] + out.shape[-1:]).index_put((keep,), out)


def kept_only(last_mlp: LastLayerMlp | None, keep: torch.Tensor) -> AbstractContextManager:
    """While open, `last_mlp` (when there is one) runs at `keep`'s positions only."""
    return last_mlp.only(keep) if last_mlp is not None else nullcontext()


def last_layer_mlp(
    model: Any, checkpointing: bool, select_logits: bool
) -> tuple[LastLayerMlp | None, str | None]:
    """The wrapped last-layer MLP, or None and why it stays whole."""
    if not select_logits:
        return None, "the model's code does not select logits by position"
    if checkpointing:
        # the layer is recomputed in backward, after the forward's kept positions are gone
        return None, "gradient checkpointing"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if any(getattr(config, name, None) for name in _EXPERT_FIELDS):
        return None, "a mixture-of-experts MLP"
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    mlp = getattr(layers[-1], "mlp", None) if isinstance(layers, torch.nn.ModuleList) else None
    if not isinstance(mlp, torch.nn.Module):
        return None, "no decoder layer list with an `mlp` in the model's code"
    return LastLayerMlp(mlp), None
