"""Will `slmforge optimize` fit? Its peak memory from config.json and the checkpoint's size.

Optimize runs in two phases (three with --int4-algo gptq|awq), never two at once
(docs/optimize.md, "Memory"):
  calibrate  PyTorch over the checkpoint in its own dtype, one decoder layer in fp32, two sets
           of calibration activations (one layer's inputs and outputs, every sample), one
           sample's MLP activations, and GPTQ's Hessians of one layer and its packed weights
           (or AWQ's search rows and the scaled checkpoint as it is saved).
  build    the builder subprocess: its runtime, the checkpoint memory-mapped (every page is
           read once, and resident pages count), the packed int4/int8 weights as they
           accumulate, the fused attention projections the builder concatenates for families
           whose checkpoints keep q, k and v apart, one quantization chunk, and an untied
           embedding cast to fp32 when it is saved.
  verify   PyTorch over the checkpoint in its own dtype, computing one layer at a time in fp32
           (the LM head and embedding by row chunks), and the reply positions' logits;
           the ONNX session before it is smaller and is freed first.
The peak is the larger phase. `slmforge doctor` reports it beside fine-tuning and serving, and
`slmforge optimize` refuses before any work when it cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmforge.config.precisions import get_precision
from slmforge.errors import InputError
from slmforge.train.memory import GIB, MIB, Estimate, available_bytes, gib
from slmforge.train.shape import ModelShape

BUILD_RUNTIME = 460 * MIB  # python + torch + transformers + onnx-ir + onnxruntime (measured)
VERIFY_RUNTIME = 520 * MIB  # the same plus onnxruntime-genai and peft (measured)
CHUNK = 2 * 64 * MIB  # one fp32 column chunk and its copy (optimize/builder_run.py)
_FUSED_BY_CHECKPOINT = {"phi3"}  # families whose checkpoints already fuse qkv and gate/up


@dataclass(frozen=True)
class OptimizeEstimate:
    build: Estimate
    verify: Estimate | None
    calibrate: Estimate | None = None

    @property
    def total(self) -> int:
        phases = (self.build, self.verify, self.calibrate)
        return max(phase.total for phase in phases if phase is not None)

    def describe(self) -> str:
        text = f"build {self.build.describe()}"
        text += f"; verify {self.verify.describe()}" if self.verify else ""
        return text + (f"; calibrate {self.calibrate.describe()}" if self.calibrate else "")


def build_estimate(shape: ModelShape, precision: str, checkpoint: int) -> Estimate:
    parts = {"runtime": BUILD_RUNTIME, "checkpoint (mapped)": checkpoint}
    quantized = get_precision(precision).quantized
    if quantized:
        head = shape.head_params or shape.embedding_params  # a tied head is quantized apart
        parts["packed weights"] = int(
            (shape.layer_linear_params + head) * get_precision(precision).packed_bytes_per_weight()
        )
        parts["chunk"] = CHUNK
    if shape.model_type not in _FUSED_BY_CHECKPOINT:
        dtype_bytes = max(1, checkpoint // max(shape.params, 1))
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        parts["fused projections"] = shape.layers * shape.hidden * (q + 2 * kv) * dtype_bytes
    if not (shape.tied and quantized):
        parts["embedding (fp32, at save)"] = shape.embedding_params * 4
    return Estimate(parts)


def verify_estimate(shape: ModelShape, checkpoint: int, prompts: int, tokens: int) -> Estimate:
    per_layer = shape.layer_linear_params // max(shape.layers, 1)
    head_chunk = 8192 * shape.hidden  # the LM head and embedding are cast by row chunks
    return Estimate(
        {
            "runtime": VERIFY_RUNTIME,
            "checkpoint (mapped)": checkpoint,
            "largest layer (fp32)": max(per_layer, head_chunk) * 4,
            # reply positions only, for the exact and the rounded pass, plus the head's output
            "logits": 3 * prompts * (tokens + 1) * shape.vocab * 4,
        }
    )


def calibration_estimate(
    shape: ModelShape, algo: str, checkpoint: int, samples: int, seq_len: int
) -> Estimate:
    per_layer = shape.layer_linear_params // max(shape.layers, 1)
    parts = {
        "runtime": VERIFY_RUNTIME,
        "checkpoint (mapped)": checkpoint,
        "layer (fp32)": per_layer * 4,
        "activations": 2 * samples * seq_len * shape.hidden * 4,
        "one sample's MLP": 3 * seq_len * shape.intermediate * 4,
    }
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if algo == "gptq":  # X^T X per Linear: q, k, v, gate and up read the hidden size
        parts["Hessians"] = (5 * shape.hidden**2 + q**2 + shape.intermediate**2) * 4
        parts["packed weights"] = int(
            (shape.layer_linear_params + shape.head_params)
            * get_precision("int4").packed_bytes_per_weight()
        )
        if shape.head_params:  # an untied head: its fp32 working copy, codes and Hessian
            parts["LM head (GPTQ)"] = shape.head_params * 5 + shape.hidden**2 * 4
    else:  # AWQ: search rows and the RTN copy of the widest group, then the scaled model saved
        widest = shape.hidden * max(q + 2 * kv, 2 * shape.intermediate)
        parts["scale search"] = 3 * widest * 4
        parts["scaled checkpoint (at save)"] = checkpoint // max(shape.layers, 1)
    return Estimate(parts)


def optimize_estimate(
    shape: ModelShape,
    precision: str,
    checkpoint: int,
    verify: bool,
    prompts: int,
    tokens: int,
    calibrate: Estimate | None = None,
) -> OptimizeEstimate:
    return OptimizeEstimate(
        build_estimate(shape, precision, checkpoint),
        verify_estimate(shape, checkpoint, prompts, tokens) if verify else None,
        calibrate,
    )


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def check_optimize_fits(estimate: OptimizeEstimate, available: int | None = None) -> None:
    """Refuse, before any work, a build this machine's memory cannot hold."""
    available = available_bytes("cpu") if available is None else available
    if available is None or estimate.total <= available:
        return
    hints = []
    if estimate.verify is not None and estimate.verify.total > estimate.build.total:
        hints.append(f"--no-verify (the build alone needs ~{gib(estimate.build.total)})")
    hints.append(f"a machine with {gib(estimate.total + GIB)} or more memory")
    raise InputError(
        f"optimize: this model needs ~{gib(estimate.total)} of memory "
        f"({estimate.describe()}), {gib(available)} is available; what would fit: "
        + " or ".join(hints)
    )
