"""The weight precisions `slmforge optimize` builds and the int4/int8 quantization methods, by
name. Everything that depends on a precision (CLI choices, the builder's options, verification
bars, memory estimates, `slmforge doctor`) reads it here, so adding one is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Precision:
    name: str
    bits: int | None  # MatMulNBits weight bits; None for a float build
    float_bytes: int  # bytes per value of the float weights and I/O it keeps
    min_agreement: float  # default --min-agreement (top-1 on confident positions)
    max_kl: float  # default --max-kl (mean KL from PyTorch)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def packed_bytes_per_weight(self, block: int = 32) -> float:
        """Bytes a quantized weight takes: its bits plus one fp32 scale per block."""
        if self.bits is None:
            return float(self.float_bytes)
        return (self.bits + 32 / block) / 8


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", None, 4, min_agreement=1.0, max_kl=1e-4),
        Precision("fp16", None, 2, min_agreement=0.95, max_kl=5e-3),
        Precision("int8", 8, 4, min_agreement=0.95, max_kl=0.02),
        Precision("int4", 4, 4, min_agreement=0.9, max_kl=0.15),
    )
}


@dataclass(frozen=True)
class QuantMethod:
    """A weight-only int4/int8 quantization method. `builder_algo` is the builder's own
    `algo_config` it builds with; a `calibrated` method first runs on activations of
    --calibration-data (optimize/calibrated.py) and hands the builder its result."""

    name: str
    description: str
    builder_algo: str
    calibrated: bool = False


QUANT_ALGOS: dict[str, QuantMethod] = {
    m.name: m
    for m in (
        QuantMethod("default", "ONNX Runtime's MLAS blockwise round-to-nearest (fast)", "default"),
        QuantMethod(
            "rtn", "round-to-nearest with clipping ratios (neural-compressor's RTN)", "rtn"
        ),
        QuantMethod(
            "k_quant",
            "llama.cpp-style k-quant scale search per block (usually the most accurate int4)",
            "k_quant",
        ),
        QuantMethod(
            "gptq",
            "GPTQ: rounding error compensated column by column with the Hessian of "
            "--calibration-data activations, layer by layer",
            "default",
            calibrated=True,
        ),
        QuantMethod(
            "awq",
            "AWQ: activation-aware per-channel scales searched on --calibration-data, folded "
            "into the preceding norm or linear, then round-to-nearest",
            "default",
            calibrated=True,
        ),
    )
}

OnnxPrecision = Literal[tuple(PRECISIONS)]  # type: ignore[valid-type]
QuantAlgo = Literal[tuple(QUANT_ALGOS)]  # type: ignore[valid-type]


def get_precision(name: str) -> Precision:
    return PRECISIONS[name]
