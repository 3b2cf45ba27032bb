"""AWQ (Lin et al., 2024): activation-aware per-input-channel scaling before round-to-nearest.

Channels that carry large activations matter most to a Linear's output, and rounding hits
every channel of a block with the same step. Scaling input channel j of the weight by s_j and
its activation by 1/s_j leaves the float product unchanged but gives salient channels a finer
grid. For each group of Linears that read one input (q/k/v after the input norm, gate/up after
the post-attention norm, o after v and down after up where the shapes allow it, and an untied
LM head after the final norm), the scale is searched as s = mean|x|^alpha over alpha in [0, 1)
(alpha = 0 is plain RTN, so the search never chooses worse than RTN on its calibration rows),
minimizing the squared output error of the RTN-rounded (W s)(x / s) on calibration
activations. 1/s is folded into what produces the input (the norm's weight, or the output rows
and bias of the Linear before), so the scaled model is the same float function; the builder
then quantizes it with its normal round-to-nearest.
Then AWQ's clipping search: for each scaled Linear (but the query and key projections, whose
errors the attention scores amplify), per output channel and block, the weights are clipped to
a ratio of the block's peak where that lowers the squared error of the block's share of the
output on the calibration rows (ratio 1 is no clipping, so again never worse on those rows).
A smaller peak is a finer grid for the other values: outliers among the weights cost less.
LoRA adapters read the scaled inputs too: `rescale_lora` rewrites one for the scaled base.
Not done here: scaling o_proj under grouped query attention (a key/value head feeds several
o_proj input channels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from slmforge.optimize import calibration
from slmforge.optimize.gptq import block_params, quantize_values, rtn

ALPHAS = tuple(i / 20 for i in range(20))
SEARCH_ROWS = 512  # calibration tokens per group the scale search runs on (CPU time)
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # 1.0 (no clipping) down to 0.55
CLIP_SKIPPED = ("q_proj", "k_proj", "qkv_proj")  # as AWQ: attention scores are too sensitive
CLIP_ROWS = 64  # output channels searched at once (bounds rows x channels x blocks floats)


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


def rounded_blocks(blocks: torch.Tensor, bits: int, sym: bool) -> torch.Tensor:
    """Blocks [..., block] rounded to nearest and dequantized, each on its own grid: the grid
    of `gptq.rtn` (and ONNX Runtime's quantizer), for all blocks at once."""
    flat = blocks.reshape(-1, blocks.shape[-1])
    scale, zero = block_params(flat, bits, sym)
    return ((quantize_values(flat, scale, zero, bits) - zero) * scale).reshape(blocks.shape)


@torch.no_grad()
def search_clip(
    x: torch.Tensor, weight: torch.Tensor, bits: int, block: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ's clipping search: per output channel and block, the ratio of CLIP_RATIOS whose
    weights, clipped to +-ratio x the block's peak and rounded to nearest, give the smallest
    squared error of the block's share of the output on the rows `x` [rows, in]. Returns the
    clipped weight [out, in] (what the builder then rounds) and the ratios [out, blocks]."""
    out_features, in_features = weight.shape
    pad = (-in_features) % block
    blocks = torch.nn.functional.pad(weight.float(), (0, pad)).reshape(out_features, -1, block)
    inputs = torch.nn.functional.pad(x.float(), (0, pad)).reshape(len(x), -1, block)
    clipped = blocks.clone()
    ratios = torch.ones(blocks.shape[:2])
    for start in range(0, out_features, CLIP_ROWS):
        part = blocks[start : start + CLIP_ROWS]
        peak = part.abs().amax(-1, keepdim=True)
        best = torch.full(part.shape[:2], float("inf"))
        for ratio in CLIP_RATIOS:
            candidate = torch.maximum(torch.minimum(part, peak * ratio), -peak * ratio)
            delta = rounded_blocks(candidate, bits, sym) - part
            error = torch.einsum("nbk,obk->nob", inputs, delta).pow(2).mean(0)
            better = error < best
            best = torch.where(better, error, best)
            ratios[start : start + CLIP_ROWS][better] = ratio
            clipped[start : start + CLIP_ROWS][better] = candidate[better]
    return clipped.reshape(out_features, -1)[:, :in_features], ratios


@dataclass(frozen=True)
class AppliedScale:
    """One group's scale as applied: its Linears' input channels were multiplied by `scale`
    and its producer's output (rows) divided by it. `layer` is the decoder layer's name (""
    for the LM head's group, whose names are the model's own)."""

    layer: str
    group: ScaleGroup
    scale: torch.Tensor
    alpha: float
    clip: dict[str, float] = field(default_factory=dict)  # mean clip ratio per clipped Linear

    def module(self, name: str) -> str:
        return f"{self.layer}.{name}" if self.layer else name


@dataclass(frozen=True)
class Search:
    bits: int
    block: int
    sym: bool
    clip: bool = True


@torch.no_grad()
def scale_group(
    root: Any, group: ScaleGroup, stats: InputStats, search: Search, name: str = ""
) -> AppliedScale:
    """Search and apply one group's scale (its modules named relative to `root`), then, with
    `search.clip`, the clipping of its Linears (but the query and key projections)."""
    modules = dict(root.named_modules())
    weight = torch.cat([modules[linear].weight for linear in group.linears])
    mean_abs = stats.abs_sum / max(stats.count, 1)
    rows = torch.cat(stats.rows)
    scale, alpha = search_scale(rows, mean_abs, weight, search.bits, search.block, search.sym)
    apply_scale(root, group, scale)
    clipped = {}
    for linear in group.linears if search.clip else ():
        if linear.rsplit(".", 1)[-1] not in CLIP_SKIPPED:  # the scaled Linear reads x / s
            module = modules[linear]
            weight, ratios = search_clip(
                rows / scale, module.weight, search.bits, search.block, search.sym
            )
            module.weight.copy_(weight)
            clipped[linear] = float(ratios.mean())
    return AppliedScale(name, group, scale, alpha, clipped)


def scale_layer(
    layer: Any, inputs: calibration.LayerInputs, search: Search, name: str = ""
) -> list[AppliedScale]:
    """Search and apply every group's scale (and clipping) in one decoder layer `name`."""
    groups = scale_groups(layer)
    stats = input_stats(layer, inputs, {group.linears[0] for group in groups})
    return [scale_group(layer, g, stats[g.linears[0]], search, name) for g in groups]


@torch.no_grad()
def scale_head(
    model: Any, last_layer: Any, inputs: calibration.LayerInputs, search: Search
) -> AppliedScale:
    """The LM head's group: it reads the final norm of the last layer's outputs."""
    norm = model.model.norm
    dtype = next(norm.parameters()).dtype
    last_layer.float()
    norm.float()
    outputs = calibration.run_layer(last_layer, inputs)
    last_layer.to(dtype)
    tokens = sum(h.shape[1] for h in outputs)
    stats = InputStats(count=tokens)
    for hidden in outputs:
        x = norm(hidden).reshape(-1, hidden.shape[-1])
        total = x.abs().sum(0)
        stats.abs_sum = total if stats.abs_sum is None else stats.abs_sum + total
        stats.rows.append(x[:: max(1, tokens // SEARCH_ROWS)].clone())
    head = model.lm_head
    head.float()
    applied = scale_group(model, ScaleGroup("model.norm", ("lm_head",)), stats, search)
    head.to(dtype)
    norm.to(dtype)
    return applied


def scale_model(
    model: Any,
    windows: list[list[int]],
    bits: int,
    block: int,
    symmetric: bool,
    clip: bool = True,
) -> list[AppliedScale]:
    """AWQ-scale (and with `clip`, clip) every decoder layer of `model` in place, then the LM
    head unless it is tied to the embedding (whose lookups a scale would change); returns
    every group's scale. Scaling leaves the layers' outputs unchanged; clipping changes them as
    little as the search can, and each layer's inputs are what the layers before it, as
    clipped, give."""
    search = Search(bits, block, symmetric, clip)
    applied: list[AppliedScale] = []
    last: tuple[Any, calibration.LayerInputs] | None = None
    for prefix, layer, inputs in calibration.layer_by_layer(model, windows, "AWQ"):
        applied += scale_layer(layer, inputs, search, prefix)
        last = (layer, inputs)
    if last is not None and not model.config.tie_word_embeddings:
        applied.append(scale_head(model, *last, search))
    return applied


_ADAPTER_KEY = re.compile(  # PEFT names: base_model.model.<module>.lora_A[.default].weight
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|base_layer)"
    r"(?:\.default)?\.(?P<kind>weight|bias)$"
)
_READS_INPUT = ("lora_A", "base_layer")  # of a scaled Linear: their columns read x / s
_WRITES_OUTPUT = ("lora_B", "base_layer")  # of a producer Linear: their rows were divided by s


@torch.no_grad()
def rescale_lora(tensors: dict[str, torch.Tensor], applied: list[AppliedScale]) -> dict:
    """A LoRA adapter's tensors (PEFT names) for the AWQ-scaled base: the same function.

    A scaled Linear reads x / s, so its lora_A (which reads the same input) becomes A diag(s);
    a producer Linear's output rows were divided by s, so its lora_B rows (and bias) are too.
    Base weights an adapter saved (PEFT does for an adapted LM head or embedding) get the
    scaling the base got.
    """
    reads = {a.module(name): a.scale for a in applied for name in a.group.linears}
    produces = {a.module(a.group.producer): a for a in applied}
    out = {}
    for key, value in tensors.items():
        value = value.float().clone()
        match = _ADAPTER_KEY.match(key)
        module, part, kind = (match["module"], match["part"], match["kind"]) if match else 3 * ("",)
        if part in _READS_INPUT and module in reads and kind == "weight":
            value *= reads[module]
        if part in _WRITES_OUTPUT and module in produces:
            scaled = produces[module]
            divisor = scaled.scale[:, None] if kind == "weight" else scaled.scale
            value[scaled.group.rows] /= divisor
        out[key] = value
    return out
