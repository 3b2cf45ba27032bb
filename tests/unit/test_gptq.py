"""GPTQ and round-to-nearest on ONNX Runtime's MatMulNBits grid (optimize/gptq.py), and the
packed layout the streaming build pass reads back (optimize/builder_run.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmforge.optimize.builder_run import dequantize_packed
from slmforge.optimize.gptq import gptq, pack_matmul_nbits, rtn


def _ort_quantize(weight: np.ndarray, bits: int, block: int, symmetric: bool) -> dict:
    """ONNX Runtime's own quantizer on a [K, N] MatMul weight, called as its Python side calls
    it (onnxruntime/quantization/matmul_nbits_quantizer.py)."""
    from onnxruntime.capi import _pybind_state as ort

    rows, cols = weight.shape
    blocks = -(-rows // block)
    padded = np.pad(weight, ((0, blocks * block - rows), (0, 0)))
    packed = np.zeros((cols, blocks, block * bits // 8), np.uint8)
    zeros = np.zeros((cols, blocks if bits == 8 else (blocks + 1) // 2), np.uint8)
    scales = np.zeros((cols, blocks), np.float32)
    quantize = ort.quantize_matmul_4bits if bits == 4 else ort.quantize_matmul_8bits
    quantize(packed, padded, scales, zeros, block, cols, rows, symmetric)
    return {f"_Q{bits}": packed, "_scales": scales, "_zero_points": zeros}


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("rows", "block"), [(256, 32), (344, 32), (256, 16), (512, 128)])
def test_rtn_packs_the_bytes_onnx_runtime_writes(rows, block, symmetric, bits):
    for seed in range(4):  # rounding ties in float32 show up about once in 10^5 values
        weight = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
        weight[:block, 0] = 0.0  # an all-zero block
        reference = _ort_quantize(weight, bits, block, symmetric)
        packed = pack_matmul_nbits(rtn(torch.from_numpy(weight.T), bits, block, symmetric))
        expected = {f"_Q{bits}", "_scales"} | (set() if symmetric else {"_zero_points"})
        assert packed.keys() == expected
        for name, array in packed.items():
            assert array.numpy().tobytes() == reference[name].tobytes(), (seed, name)


@pytest.mark.parametrize("symmetric", [True, False])
def test_packed_weights_dequantize_to_what_the_codes_stand_for(symmetric):
    weight = torch.randn(40, 344)
    quantized = rtn(weight, 4, 32, symmetric)
    arrays = {k: v.numpy() for k, v in pack_matmul_nbits(quantized).items()}
    restored = dequantize_packed(
        arrays["_Q4"], arrays["_scales"], arrays.get("_zero_points"), 4, weight.shape[1]
    )
    assert np.allclose(restored, quantized.dequantize().numpy())
    assert np.abs(restored - weight.numpy()).max() < 0.2 * weight.abs().max()


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    weight = torch.randn(32, 96)
    for symmetric in (True, False):
        ours = pack_matmul_nbits(gptq(weight, torch.eye(96), symmetric=symmetric))
        plain = pack_matmul_nbits(rtn(weight, symmetric=symmetric))
        assert all(torch.equal(ours[k], plain[k]) for k in plain)


def _correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """Activations with correlated channels and a few large ones, as a transformer's are."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) / features**0.5
    x = torch.randn(tokens, features, generator=g) @ (torch.eye(features) + 2 * mixing)
    x[:, :4] *= 6
    return x


def _reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, block: int = 32):
    """GPTQ as first written (OBQ's update with an explicitly downdated inverse, float64, one
    column at a time, no Cholesky, no lazy batches): codes of the same symmetric int4 grid."""
    from slmforge.optimize.gptq import block_params, quantize_values

    w = weight.double().clone()
    h = hessian.double().clone()
    h += 0.01 * h.diagonal().mean() * torch.eye(len(h), dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    codes = torch.zeros(w.shape, dtype=torch.float64)
    scale = zero = None
    for col in range(w.shape[1]):
        if col % block == 0:
            scale, zero = block_params(w[:, col : col + block], 4, True)
        codes[:, col] = quantize_values(w[:, col : col + 1], scale, zero, 4)[:, 0]
        error = (w[:, col] - (codes[:, col] - zero[:, 0]) * scale[:, 0]) / hinv[col, col]
        w[:, col:] -= error[:, None] * hinv[col, col:][None, :]
        hinv -= torch.outer(hinv[:, col], hinv[col, :]) / hinv[col, col]
    return codes


def test_gptq_matches_the_reference_computation():
    x = _correlated_inputs(512, 64)
    weight = torch.randn(16, 64)
    hessian = x.T @ x
    ours = gptq(weight, hessian).codes.double()
    reference = _reference_gptq(weight, hessian)
    # float32 against float64: a rare code may land on the other side of a rounding boundary
    assert (ours == reference).float().mean() > 0.98


def test_gptq_lowers_the_output_error_on_calibration_inputs():
    x = _correlated_inputs(1024, 128)
    weight = torch.randn(64, 128) * 0.05
    exact = x @ weight.T

    def output_error(quantized) -> float:
        return float(((x @ quantized.dequantize().T - exact) ** 2).mean())

    rounded, compensated = output_error(rtn(weight)), output_error(gptq(weight, x.T @ x))
    assert compensated < 0.7 * rounded, (compensated, rounded)


def test_gptq_survives_input_channels_calibration_never_saw():
    x = _correlated_inputs(256, 64)
    x[:, 10:20] = 0.0  # dead channels: a zero Hessian row and column
    weight = torch.randn(8, 64)
    quantized = gptq(weight, x.T @ x)
    assert torch.isfinite(quantized.dequantize()).all()
    dead = quantized.dequantize()[:, 10:20] - weight[:, 10:20]
    assert dead.abs().max() < quantized.scales.abs().max()  # rounded, not zeroed or blown up


def test_gptq_with_block_larger_than_the_lazy_batch():
    x = _correlated_inputs(512, 512)
    weight = torch.randn(8, 512)
    quantized = gptq(weight, x.T @ x, block=256)
    assert quantized.scales.shape == (8, 2)
    exact = x @ weight.T
    errors = [
        ((x @ q.dequantize().T - exact) ** 2).mean() for q in (rtn(weight, block=256), quantized)
    ]
    assert errors[1] < errors[0]
