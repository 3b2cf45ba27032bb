"""AWQ (Lin et al., 2024): activation-aware per-input-channel scaling before round-to-nearest.

Channels that carry large activations matter most to a Linear's output, and rounding hits
every channel of a block with the same step. Scaling input channel j of the weight by s_j and
its activation by 1/s_j leaves the float product unchanged but gives salient channels a finer
grid. For each group of Linears that read one input (q/k/v after the input norm, gate/up after
the post-attention norm, o after v and down after up where the shapes allow it), the scale is
searched as s = mean|x|^alpha over alpha in [0, 1) (alpha = 0 is plain RTN, so the search never
chooses worse than RTN on its calibration rows), minimizing the squared output error of the
RTN-rounded (W s)(x / s) on calibration activations. 1/s is folded into what produces the input
(the norm's weight, or the output rows and bias of the Linear before), so the scaled model is
the same float function; the builder then quantizes it with its normal round-to-nearest.
Not done here: AWQ's clipping search (per-block clip ratios), and scaling o_proj under grouped
query attention (a key/value head feeds several o_proj input channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from slmforge.optimize import calibration
from slmforge.optimize.gptq import rtn

ALPHAS = tuple(i / 20 for i in range(20))
SEARCH_ROWS = 512  # calibration tokens per group the scale search runs on (CPU time)


@dataclass(frozen=True)
class ScaleGroup:
    """Linears reading one input, and the module whose output (rows) produces that input."""

    producer: str  # a norm, or a Linear (its `rows` output rows)
    linears: tuple[str, ...]
    rows: slice = field(default_factory=lambda: slice(None))


def scale_groups(layer: Any) -> list[ScaleGroup]:
    """The groups of a llama/qwen2/mistral (separate projections) or phi3 (fused) layer."""
    mods = dict(calibration.linears(layer))
    groups = []
    if "self_attn.qkv_proj" in mods:
        groups.append(ScaleGroup("input_layernorm", ("self_attn.qkv_proj",)))
    else:
        groups.append(ScaleGroup("input_layernorm", tuple(f"self_attn.{p}_proj" for p in "qkv")))
    values = "self_attn.qkv_proj" if "self_attn.qkv_proj" in mods else "self_attn.v_proj"
    o_in, v_out = mods["self_attn.o_proj"].in_features, mods[values].out_features
    if values == "self_attn.v_proj" and v_out == o_in:
        groups.append(ScaleGroup(values, ("self_attn.o_proj",)))
    elif values == "self_attn.qkv_proj" and v_out == 3 * o_in:  # fused, no grouped heads
        groups.append(ScaleGroup(values, ("self_attn.o_proj",), slice(v_out - o_in, v_out)))
    if "mlp.gate_up_proj" in mods:
        inner = mods["mlp.down_proj"].in_features
        groups.append(ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",)))
        groups.append(ScaleGroup("mlp.gate_up_proj", ("mlp.down_proj",), slice(inner, 2 * inner)))
    else:
        groups.append(ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))
        groups.append(ScaleGroup("mlp.up_proj", ("mlp.down_proj",)))
    return groups


@dataclass
class InputStats:
    """Mean |x| per input channel over every calibration token, and rows kept for the search."""

    abs_sum: torch.Tensor | None = None
    count: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)


def input_stats(
    layer: Any, inputs: calibration.LayerInputs, names: set[str]
) -> dict[str, InputStats]:
    """`InputStats` of the Linears in `names`, from one pass of the layer over the windows."""
    tokens = sum(h.shape[1] for h in inputs.hidden)
    stride = max(1, tokens // SEARCH_ROWS)
    stats = {name: InputStats() for name in names}

    def record(name: str, x: torch.Tensor) -> None:
        if name in stats:
            entry = stats[name]
            total = x.abs().sum(0)
            entry.abs_sum = total if entry.abs_sum is None else entry.abs_sum + total
            entry.count += len(x)
            entry.rows.append(x[::stride].clone())

    calibration.capture_linear_inputs(layer, inputs, record)
    return stats


@torch.no_grad()
def search_scale(
    x: torch.Tensor, mean_abs: torch.Tensor, weight: torch.Tensor, bits: int, block: int, sym: bool
) -> tuple[torch.Tensor, float]:
    """The per-input-channel scale (and its alpha) whose RTN-rounded (W s)(x / s) is closest
    to x W^T on the rows `x` [rows, in]; `weight` [out, in] is the group's weights stacked."""
    reference = x @ weight.T
    best: tuple[float, torch.Tensor, float] | None = None
    for alpha in ALPHAS:
        scale = mean_abs.pow(alpha).clamp(min=1e-4)
        scale = scale / (scale.max() * scale.min()).sqrt()
        rounded = rtn(weight * scale, bits, block, sym).dequantize() / scale
        error = float(((x @ rounded.T - reference) ** 2).mean())
        if best is None or error < best[0]:
            best = (error, scale, alpha)
    assert best is not None
    return best[1], best[2]


@torch.no_grad()
def apply_scale(layer: Any, group: ScaleGroup, scale: torch.Tensor) -> None:
    """Multiply the group's weight columns by `scale` and divide what produces their input by
    it: the layer computes the same function."""
    modules = dict(layer.named_modules())
    for name in group.linears:
        modules[name].weight.mul_(scale)
    producer = modules[group.producer]
    if isinstance(producer, torch.nn.Linear):
        producer.weight[group.rows].div_(scale[:, None])
        if producer.bias is not None:
            producer.bias[group.rows].div_(scale)
    else:
        producer.weight.div_(scale)


@torch.no_grad()
def scale_layer(
    layer: Any, inputs: calibration.LayerInputs, bits: int, block: int, sym: bool
) -> dict[str, float]:
    """Search and apply every group's scale in one decoder layer; returns alpha per group."""
    groups = scale_groups(layer)
    stats = input_stats(layer, inputs, {group.linears[0] for group in groups})
    modules = dict(layer.named_modules())
    alphas = {}
    for group in groups:
        entry = stats[group.linears[0]]
        weight = torch.cat([modules[name].weight for name in group.linears])
        mean_abs = entry.abs_sum / max(entry.count, 1)
        scale, alphas[group.linears[0]] = search_scale(
            torch.cat(entry.rows), mean_abs, weight, bits, block, sym
        )
        apply_scale(layer, group, scale)
    return alphas


def scale_model(
    model: Any, windows: list[list[int]], bits: int, block: int, symmetric: bool
) -> dict[str, float]:
    """AWQ-scale every decoder layer of `model` in place; returns the alpha chosen per group
    (keyed by the group's first Linear). The layers' outputs are unchanged, so each layer's
    inputs are the float model's."""
    chosen: dict[str, float] = {}
    for prefix, layer, inputs in calibration.layer_by_layer(model, windows, "AWQ"):
        for name, alpha in scale_layer(layer, inputs, bits, block, symmetric).items():
            chosen[f"{prefix}.{name}"] = alpha
    return chosen
