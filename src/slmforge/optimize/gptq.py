"""Blockwise int4/int8 weight quantization in PyTorch, round-to-nearest and GPTQ, on the exact
grid ONNX Runtime's `MatMulNBits` uses, and the packing of the result into its initializers.

The grid (checked byte for byte against ONNX Runtime's own quantizer in tests/unit/test_gptq.py):
blocks of `block` consecutive input channels of one output channel share a scale.
- symmetric: the block's largest-magnitude value `peak` maps to -2^(bits-1): scale = peak / -8
  (int4) and code = clamp(round(w * (1 / scale) + 8), 0, 15); the zero point 8 is implicit.
- asymmetric: lo = min(0, min w), hi = max(0, max w), scale = (hi - lo) / 15,
  zero = clamp(round(-lo / scale), 0, 15), code = clamp(round(w * (1 / scale) + zero), 0, 15).
Rounding is half up, in float32.
A weight is dequantized as (code - zero) * scale.

GPTQ (Frantar et al., 2023) quantizes the input channels one at a time and spreads each one's
rounding error over the channels not yet quantized, weighted by the inverse Hessian of the
layer's squared output error, H = 2 X^T X over calibration inputs X. A block's scale is set
from the (already error-compensated) weights when its first channel is reached. With H = I the
compensation is zero and GPTQ is round-to-nearest exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

LAZY_COLUMNS = 128  # columns whose error is propagated together (a multiple of every block)


@dataclass
class QuantizedWeight:
    """A [out, in] weight as int codes and per-block scales (and zero points when asymmetric)."""

    codes: torch.Tensor  # uint8 [out, in], 0 .. 2^bits - 1
    scales: torch.Tensor  # float32 [out, blocks]
    zero_points: torch.Tensor  # uint8 [out, blocks] (all 2^(bits-1) when symmetric)
    bits: int
    block: int
    symmetric: bool

    def dequantize(self) -> torch.Tensor:
        """The float [out, in] weight the codes stand for."""
        zeros, scales = self._per_column(self.zero_points), self._per_column(self.scales)
        return (self.codes.float() - zeros) * scales

    def _per_column(self, per_block: torch.Tensor) -> torch.Tensor:
        """[out, blocks] values repeated over their block's columns: [out, in]."""
        return per_block.float().repeat_interleave(self.block, 1)[:, : self.codes.shape[1]]


def block_params(
    block: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [rows, 1] of each row of `block` [rows, width] (see the module doc)."""
    levels = 2**bits - 1
    if symmetric:
        peak = torch.gather(block, 1, block.abs().argmax(1, keepdim=True))
        return peak / -(2 ** (bits - 1)), torch.full_like(peak, 2 ** (bits - 1))
    lo = block.min(1, keepdim=True).values.clamp(max=0)
    hi = block.max(1, keepdim=True).values.clamp(min=0)
    scale = (hi - lo) / levels
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.where(scale == 0, torch.zeros_like(scale), round_half_up(-lo / safe))
    return scale, zero.clamp(0, levels)


def round_half_up(values: torch.Tensor) -> torch.Tensor:
    """x.5 rounds up, as ONNX Runtime's quantizer rounds (torch.round rounds half to even)."""
    floor = torch.floor(values)
    return floor + (values - floor >= 0.5).to(values.dtype)


def quantize_values(
    values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """Codes (as floats) of `values` on the grid `scale`, `zero` (a zero scale gives `zero`)."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    # times the reciprocal, plus the zero point, then rounded, in float32: as ONNX Runtime's
    # quantizer computes it (dividing instead changes a code in about 1 of 10^5)
    codes = torch.clamp(round_half_up(values * (1 / safe) + zero), 0, 2**bits - 1)
    return torch.where(scale == 0, zero.expand_as(codes), codes)


def _empty(weight: torch.Tensor, bits: int, block: int, symmetric: bool) -> QuantizedWeight:
    rows, cols = weight.shape
    blocks = -(-cols // block)
    return QuantizedWeight(
        codes=torch.zeros((rows, cols), dtype=torch.uint8),
        scales=torch.zeros((rows, blocks), dtype=torch.float32),
        zero_points=torch.zeros((rows, blocks), dtype=torch.uint8),
        bits=bits,
        block=block,
        symmetric=symmetric,
    )


def rtn(
    weight: torch.Tensor, bits: int = 4, block: int = 32, symmetric: bool = True
) -> QuantizedWeight:
    """Round-to-nearest, as ONNX Runtime's default quantizer does it."""
    weight = weight.float()
    out = _empty(weight, bits, block, symmetric)
    for index, start in enumerate(range(0, weight.shape[1], block)):
        values = weight[:, start : start + block]
        scale, zero = block_params(values, bits, symmetric)
        out.codes[:, start : start + block] = quantize_values(values, scale, zero, bits).to(
            torch.uint8
        )
        out.scales[:, index], out.zero_points[:, index] = scale[:, 0], zero[:, 0].to(torch.uint8)
    return out


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening H's diagonal by `damp` x its mean.

    An input channel that calibration never activated (zero diagonal) gets a unit diagonal:
    it couples to nothing, so it is rounded to nearest and passes no error on.
    """
    hessian = hessian.double().clone()
    diagonal = hessian.diagonal()
    dead = diagonal == 0
    diagonal[dead] = 1.0
    diagonal += damp * diagonal.mean()
    factor = torch.linalg.cholesky(hessian)
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    block: int = 32,
    symmetric: bool = True,
    damp: float = 0.01,
) -> QuantizedWeight:
    """GPTQ of `weight` [out, in] given the Hessian [in, in] of its calibration inputs."""
    work = weight.float().clone()
    hinv = inverse_hessian_factor(hessian, damp)
    out = _empty(work, bits, block, symmetric)
    scale = zero = torch.empty(0)
    cols, lazy = work.shape[1], max(LAZY_COLUMNS, block)  # a batch holds whole blocks
    for lazy_start in range(0, cols, lazy):
        lazy_stop = min(lazy_start + lazy, cols)
        errors = torch.zeros((work.shape[0], lazy_stop - lazy_start))
        for col in range(lazy_start, lazy_stop):
            if col % block == 0:
                scale, zero = block_params(work[:, col : col + block], bits, symmetric)
                out.scales[:, col // block] = scale[:, 0]
                out.zero_points[:, col // block] = zero[:, 0].to(torch.uint8)
            codes = quantize_values(work[:, col : col + 1], scale, zero, bits)
            out.codes[:, col] = codes[:, 0].to(torch.uint8)
            error = (work[:, col] - (codes[:, 0] - zero[:, 0]) * scale[:, 0]) / hinv[col, col]
            # within the lazy batch now; beyond it once the batch is done
            work[:, col + 1 : lazy_stop] -= error[:, None] * hinv[col, col + 1 : lazy_stop]
            errors[:, col - lazy_start] = error
        work[:, lazy_stop:] -= errors @ hinv[lazy_start:lazy_stop, lazy_stop:]
    return out


def pack_matmul_nbits(weight: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The `MatMulNBits` initializers of a quantized [out, in] weight (ONNX Runtime's layout):
    `_Q{bits}` uint8 [N=out, blocks, block*bits/8] (for int4, even input channels in the low
    nibble), `_scales` float32 [N, blocks], `_zero_points` uint8 (int4: two blocks a byte, low
    nibble first) only when asymmetric. A last partial block is padded with code 0, as ONNX
    Runtime's quantizer leaves it."""
    rows, cols = weight.codes.shape
    blocks = weight.scales.shape[1]
    padded = torch.zeros((rows, blocks * weight.block), dtype=torch.uint8)
    padded[:, :cols] = weight.codes
    codes = padded.reshape(rows, blocks, weight.block)
    suffix = f"_Q{weight.bits}"
    if weight.bits == 8:
        out = {suffix: codes.contiguous()}
        if not weight.symmetric:
            out["_zero_points"] = weight.zero_points.contiguous()
    else:
        out = {suffix: (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()}
        if not weight.symmetric:
            zeros = weight.zero_points
            if blocks % 2:  # the quantizer fills the last byte's unused nibble with 8
                zeros = torch.nn.functional.pad(zeros, (0, 1), value=8)
            out["_zero_points"] = (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).contiguous()
    out["_scales"] = weight.scales.contiguous()
    return out


def layer_hessians(layer: Any, inputs: Any) -> dict[str, torch.Tensor]:
    """X^T X of each Linear's calibration inputs X (GPTQ's H = 2 X^T X / n up to a factor,
    which the relative dampening ignores), by the Linear's name in the layer."""
    from slmforge.optimize import calibration

    hessians: dict[str, torch.Tensor] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        product = x.T @ x
        hessians[name] = hessians[name] + product if name in hessians else product

    calibration.capture_linear_inputs(layer, inputs, accumulate)
    return hessians


def quantize_model(
    model: Any, windows: list[list[int]], bits: int, block: int, symmetric: bool
) -> dict[str, torch.Tensor]:
    """GPTQ of every decoder-layer Linear of `model`, layer by layer: each layer's Hessians come
    from the outputs of the layers before it as already quantized, so later layers compensate
    for earlier rounding; then of the LM head, on the final norm of the last layer's outputs,
    unless it is tied to the embedding (whose lookups would then read GPTQ's codes, which
    suit the head's inputs, not the embedding's). Returns the packed `MatMulNBits` arrays keyed
    `<module name><suffix>` (suffixes as `pack_matmul_nbits`); a tied head is left to the
    builder's rounding."""
    from slmforge.optimize import calibration

    packed: dict[str, torch.Tensor] = {}
    last: tuple[Any, Any] | None = None
    for prefix, layer, inputs in calibration.layer_by_layer(model, windows, "GPTQ"):
        hessians = layer_hessians(layer, inputs)
        for name, linear in calibration.linears(layer):
            quantized = gptq(linear.weight, hessians.pop(name), bits, block, symmetric)
            with torch.no_grad():  # the next layer sees this one's quantized output
                linear.weight.copy_(quantized.dequantize())
            for suffix, array in pack_matmul_nbits(quantized).items():
                packed[f"{prefix}.{name}{suffix}"] = array
        last = (layer, inputs)
    if last is not None and not model.config.tie_word_embeddings:
        hessian = head_hessian(model, *last)
        quantized = gptq(model.lm_head.weight, hessian, bits, block, symmetric)
        for suffix, array in pack_matmul_nbits(quantized).items():
            packed[f"lm_head{suffix}"] = array
    return packed


@torch.no_grad()
def head_hessian(model: Any, last_layer: Any, inputs: Any) -> torch.Tensor:
    """X^T X of the LM head's inputs: the final norm of the (quantized) last layer's outputs."""
    from slmforge.optimize import calibration

    norm = model.model.norm
    dtype = next(norm.parameters()).dtype
    last_layer.float()
    norm.float()
    hessian = None
    for hidden in calibration.run_layer(last_layer, inputs):
        x = norm(hidden).reshape(-1, hidden.shape[-1])
        hessian = x.T @ x if hessian is None else hessian + x.T @ x
    last_layer.to(dtype)
    norm.to(dtype)
    assert hessian is not None  # layer_by_layer only yields with windows
    return hessian
