"""Will a fine-tuning run fit? The estimate from a model's config alone, and the check
`slmforge finetune` runs with it before loading any weights.

A run's peak memory, per process, is the sum of:
  runtime      what the framework holds before any tensor (torch + transformers + peft resident
               on CPU, measured 390 MiB here; a CUDA context on a GPU)
  weights      the base in its load dtype (fp32 master weights for full fine-tuning, NF4 with
               double quantization for QLoRA's linear layers)
  optimizer    trainable parameters x (fp32 weight copy for adapters + gradient + 2 AdamW moments)
  activations  what autograd keeps per token per layer: every tensor a decoder layer saves for
               backward, counted for a Llama-style block (two RMSNorms kept in fp32, q/k with
               rotary copies, GQA key/value repeated to all heads, the attention output, the gated
               MLP's four intermediate-size tensors, one input copy per LoRA module from
               dropout), with a fused attention kernel that keeps no score matrix; DoRA
               adds each adapted weight merged with its adapter, and its norm
  logits       batch x seq x vocab: the head's output, its fp32 copy, log-softmax, gradient
Summing them is an upper bound: optimizer moments appear after the first step, when most
activations are already freed. A preference pair (dpo, orpo, simpo) puts its chosen and
rejected answers through the model in one pass, so its micro-batch counts twice its rows
(`train/sft.py`'s `run_shape`). DPO's reference log-probabilities add no peak: the adapter-off
pass (adapter methods) runs without gradients before the policy's pass, so it keeps one
layer's activations and its logits only while none of the policy's are alive, and `full`
computes them in one such pass before the first step (before any optimizer state exists);
both cost time, not memory. tests/integration/test_doctor_fit.py compares it with the peak
memory of a real run of the `small` model; docs/setup.md has the figures.

The check: a run that does not fit as asked but fits with gradient checkpointing gets it switched
on (and says so); a run that cannot fit at all is refused with what would fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from slmforge import progress
from slmforge.config.methods import get_finetune_method, quantized_adapter_method
from slmforge.errors import InputError
from slmforge.train.shape import ModelShape

GIB = 1024**3
MIB = 1024**2
RUNTIME = {"cpu": 450 * MIB, "mps": 450 * MIB, "cuda": 512 * MIB}  # torch, a CUDA context
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# --precision bf16-weights (train/bf16_weights.py): the frozen base stored in bf16, computed in
# fp32, each weight cast for its own product at most CHUNK_BYTES at a time
WEIGHT_BYTES = DTYPE_BYTES | {"bf16-weights": 2}
COMPUTE_BYTES = DTYPE_BYTES | {"bf16-weights": 4}
CAST_BYTES = {"bf16-weights": 64 * MIB}
_QUANT_SCALE_BITS = 0.127  # NF4's double-quantized absmax per 64 weights (QLoRA paper, sec. 2)
_NORM_UNITS = 6  # two RMSNorms, each keeping input, rsqrt product and output in fp32
_LOGIT_FP32_COPIES = 3  # fp32 copy of the shifted logits, log-softmax output, its gradient


# -- LoRA ----------------------------------------------------------------------------------------
def _module_dims(shape: ModelShape) -> dict[str, tuple[int, int]]:
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "qkv_proj": (h, q + 2 * kv),
        "dense": (q, h),
        "c_attn": (h, q + 2 * kv),
        "c_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
        "gate_up_proj": (h, 2 * i),
    }


def lora_modules(shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of each module one decoder layer adapts with slmforge's default targets."""
    from slmforge.train.methods import DEFAULT_TARGETS

    names = DEFAULT_TARGETS.get(shape.model_type, ["q_proj", "k_proj", "v_proj", "o_proj"])
    dims = _module_dims(shape)
    return [dims[name] for name in names if name in dims]


def trainable_params(shape: ModelShape, method: str, rank: int) -> int:
    if not get_finetune_method(method).adapter:
        return shape.params
    modules = lora_modules(shape)
    per_layer = sum(rank * (n_in + n_out) for n_in, n_out in modules)
    if get_finetune_method(method).weight_decomposed:
        per_layer += sum(n_out for _, n_out in modules)  # the magnitude vectors
    return shape.layers * per_layer


# -- the estimate --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Bytes by component; `total` is their sum."""

    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(size)}" for name, size in self.components.items())
        return f"~{gib(self.total)} ({parts})"


def gib(size: int | float) -> str:
    return f"{size / GIB:.1f} GiB"


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Measured here on the
    0.5B shape (docs/finetune.md): with it, bf16 LoRA steps ran 2x faster than fp32; without
    it (oneDNN limited to AVX-512 without BF16) 2x slower, and on AVX2 alone far slower still.

    `SLMFORGE_CPU_BF16=0` or `1` overrides the detection: for a virtual machine whose flags
    mislead, or to get one machine's `auto` choice on another (the test suite pins 0, so its
    numbers do not depend on the host it lands on)."""
    import os

    override = os.environ.get("SLMFORGE_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    import torch

    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def train_dtype(
    requested: str,
    device: str,
    method: str = "lora",
    checkpoint: str | None = None,
    cpu_bf16: bool | None = None,
) -> str:
    """The compute dtype `slmforge finetune --precision` picks on `device`.

    auto: bf16 on CUDA (the caller falls back to fp16 where bf16 is unsupported). On CPU,
    adapter methods train over a bf16 base wherever the CPU multiplies bf16 natively
    (`cpu_bf16`, detected when None), from a bf16 or an fp32 checkpoint alike, as on CUDA:
    half the weight memory and 1.8x the fp32 steps on the `small` model (docs/benchmarks.md).
    Without native bf16, a bf16 checkpoint's base stays in bf16 and is computed in fp32
    (`bf16-weights`: half the weight memory, ~10% slower than fp32; bf16 products would crawl
    there) and an fp32 checkpoint trains in fp32. Full fine-tuning on CPU keeps fp32."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16"
    traits = get_finetune_method(method)
    if device != "cpu" or not traits.adapter or traits.base_bits is not None:
        return "fp32"
    native = cpu_computes_bf16() if cpu_bf16 is None else cpu_bf16
    if native:
        return "bf16"
    return "bf16-weights" if checkpoint == "bf16" else "fp32"


def _weights(shape: ModelShape, method: str, dtype: str) -> int:
    traits = get_finetune_method(method)
    if not traits.adapter:
        return shape.params * 4  # full fine-tuning keeps fp32 master weights
    if traits.base_bits is not None:
        linear = shape.layer_linear_params
        quantized = int(linear * (traits.base_bits + _QUANT_SCALE_BITS) / 8)
        return quantized + (shape.params - linear) * WEIGHT_BYTES[dtype]
    return shape.params * WEIGHT_BYTES[dtype]


def activation_bytes_per_token(
    shape: ModelShape, method: str, dtype: str, gradient_checkpointing: bool
) -> int:
    """What autograd keeps per token of a micro-batch, over all layers (logits excluded)."""
    b, h = COMPUTE_BYTES[dtype], shape.hidden
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    saved = h + 2 * (q + kv) + kv  # projection input, q/k and their rotary copies, v
    saved += 2 * q if kv < q else 0  # keys and values repeated to every head (GQA)
    saved += 2 * q + h  # attention output, o_proj input, MLP input
    saved += 4 * shape.intermediate  # gate, activation, up, product
    if get_finetune_method(method).adapter:
        saved += sum(n_in for n_in, _ in lora_modules(shape))  # dropout copies of inputs
    layer = saved * b + _NORM_UNITS * h * 4
    if gradient_checkpointing:
        # layer inputs, plus the one layer recomputed in backward and its gradients
        return shape.layers * h * b + 2 * layer
    return shape.layers * layer


def finetune_estimate(
    shape: ModelShape,
    method: str,
    dtype: str,
    device: str,
    batch: int,
    seq: int,
    rank: int = 16,
    gradient_checkpointing: bool = False,
    logit_tokens: int | None = None,
) -> Estimate:
    """Peak bytes of one process; `logit_tokens` is how many positions of a micro-batch get
    logits (training computes them only where a label is predicted; default: every token)."""
    tokens = batch * seq
    trainable = trainable_params(shape, method, rank)
    traits = get_finetune_method(method)
    state_bytes = 16 if traits.adapter else 12  # (+ fp32 copy) + gradient + two moments
    logit_bytes = COMPUTE_BYTES[dtype] + 4 * _LOGIT_FP32_COPIES
    per_token = activation_bytes_per_token(shape, method, dtype, gradient_checkpointing)
    activations = tokens * per_token
    if traits.weight_decomposed:  # DoRA builds each adapted weight (W + BA) and its norm per step
        merged = sum(n_in * n_out for n_in, n_out in lora_modules(shape))
        activations += 2 * shape.layers * merged * COMPUTE_BYTES[dtype]
    return Estimate(
        {
            "runtime": RUNTIME.get(device, RUNTIME["cpu"]),
            "weights": _weights(shape, method, dtype) + CAST_BYTES.get(dtype, 0),
            "optimizer": trainable * state_bytes,
            "activations": activations,
            "logits": min(tokens, logit_tokens or tokens) * shape.vocab * logit_bytes,
        }
    )


# -- merge ---------------------------------------------------------------------------------------
MERGE_RUNTIME = 280 * MIB  # python + torch + transformers' tokenizer + safetensors (270 measured)


def _checkpoint_linears(shape: ModelShape) -> list[int]:
    """Parameters of each linear weight one decoder layer stores (Phi-3 stores qkv and gate/up
    fused, the other families one tensor per projection)."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if shape.model_type == "phi3":
        return [h * (q + 2 * kv), q * h, h * 2 * i, i * h]
    return [h * q, h * kv, h * kv, q * h, h * i, h * i, i * h]


def merge_estimate(
    shape: ModelShape, stored: str, method: str = "lora", rank: int = 16
) -> Estimate:
    """Peak bytes of `slmforge merge` (train/merge.py), which streams the base one tensor at a
    time: its runtime, the adapter's fp32 tensors (read whole), and the largest working set of
    one tensor. An adapted weight holds the stored tensor and its fp32 copy (the same tensor
    when stored in fp32) plus two fp32 temporaries at once: B @ A and the scaled delta, then the
    delta and the merged sum (DoRA adds the rows rescaled to their magnitudes); the cast back
    comes after the copies are freed. Any other tensor is copied as stored. Measured here
    (docs/benchmarks.md): 545 MiB for the Qwen2.5-0.5B shape, 712 MiB for Phi-3-mini."""
    size = DTYPE_BYTES[stored]
    fp32_copy = 0 if size == 4 else 4
    per_weight = size + fp32_copy + 8  # stored, fp32 copy, then B @ A and the delta or the sum
    if get_finetune_method(method).weight_decomposed:
        per_weight += 4  # the rows rescaled to their magnitudes
    adapted = max((n_in * n_out for n_in, n_out in lora_modules(shape)), default=0)
    copied = max([shape.embedding_params, *_checkpoint_linears(shape)]) * size
    adapter = trainable_params(shape, method, rank) if get_finetune_method(method).adapter else 0
    return Estimate(
        {
            "runtime": MERGE_RUNTIME,
            "adapter": adapter * 4,
            "largest tensor": max(adapted * per_weight, copied),
        }
    )


def largest(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), assuming fits is monotone; low-1 if none."""
    if not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


# -- the check before loading --------------------------------------------------------------------
def available_bytes(device: str) -> int | None:
    """Memory this process may grow to on `device`: free memory plus what it holds already
    (the estimate counts the runtime this process has loaded); None where unknown (MPS)."""
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free) + torch.cuda.memory_allocated()
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available) + psutil.Process().memory_info().rss
    return None


def local_processes(world: int) -> int:
    """Training processes sharing this machine's memory (torchrun sets LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


@dataclass(frozen=True)
class RunShape:
    """What a fine-tuning run asks for, as the estimate needs it."""

    method: str
    dtype: str
    device: str
    batch: int  # rows per micro-batch of one process
    seq: int  # tokens of the longest row
    rank: int
    gradient_checkpointing: bool
    processes: int = 1  # data-parallel processes (--batch-size is split across them)
    trained: int | None = None  # most trained tokens in a row (None: every token gets logits)

    def estimate(self, shape: ModelShape, **changes: object) -> Estimate:
        run = {**self.__dict__, **changes}
        return finetune_estimate(
            shape,
            run["method"],
            run["dtype"],
            run["device"],
            run["batch"],
            run["seq"],
            run["rank"],
            run["gradient_checkpointing"],
            run["batch"] * run["trained"] if run["trained"] else None,
        )


def check_run(shape: ModelShape, run: RunShape, available: int | None, strict: bool) -> bool:
    """Whether to train with gradient checkpointing; raises InputError when nothing fits.

    A run that fits as asked keeps its settings. One that fits only with gradient checkpointing
    gets it switched on (with `strict`, the run stops instead). One that does not fit either way
    is refused, naming what would fit."""
    asked = run.estimate(shape)
    if available is None or asked.total <= available:
        where = "unknown" if available is None else gib(available)
        progress.info(f"memory: needs {asked.describe()}; available on {run.device}: {where}")
        return run.gradient_checkpointing
    checkpointed = run.estimate(shape, gradient_checkpointing=True)
    if checkpointed.total <= available and not strict:
        progress.warn(
            f"memory: this run needs {gib(asked.total)} but {gib(available)} is available on "
            f"{run.device}; gradient checkpointing is on, which brings it to "
            f"{gib(checkpointed.total)} (slower steps: activations are recomputed in backward)"
        )
        return True
    needs = f"finetune: this run needs {asked.describe()}"
    if not run.gradient_checkpointing:
        needs += f"; {gib(checkpointed.total)} with gradient checkpointing"
    raise InputError(
        f"{needs}; {gib(available)} is available on {run.device}. "
        + what_would_fit(shape, run, available)
    )


def what_would_fit(shape: ModelShape, run: RunShape, available: int) -> str:
    """The changes that would make `run` fit in `available` bytes, each with gradient
    checkpointing on (finetune switches it on itself unless --strict-memory)."""
    run = RunShape(**{**run.__dict__, "gradient_checkpointing": True})
    options = []
    if run.estimate(shape).total <= available:  # only --strict-memory stopped it
        options.append("--gradient-checkpointing")
    traits = get_finetune_method(run.method)
    if run.dtype == "fp32" and traits.adapter and traits.base_bits is None:
        # where bf16 products would crawl, the base is stored in bf16 and computed in fp32
        slow = run.device == "cpu" and not cpu_computes_bf16()
        half = "bf16-weights" if slow else "bf16"
        estimate = run.estimate(shape, dtype=half)
        if estimate.total <= available:
            options.append(f"--precision {half} ({gib(estimate.total)})")
    batch = largest(lambda b: run.estimate(shape, batch=b).total <= available, 1, run.batch)
    if 1 <= batch < run.batch:
        options.append(
            f"--batch-size {batch * run.processes} (raise --grad-accum to keep the rows per step)"
        )
    seq = largest(lambda s: run.estimate(shape, seq=s).total <= available, 16, run.seq)
    if 16 <= seq < run.seq:
        options.append(f"--max-seq-len {seq}")
    hint = ""
    quantized = quantized_adapter_method()
    if quantized and traits.adapter and traits.base_bits is None:
        need = run.estimate(shape, method=quantized.name, device="cuda", dtype="bf16").total
        if run.device == "cuda" and need <= available:
            options.append(f"--method {quantized.name} ({gib(need)})")
        elif run.device != "cuda":
            hint = f" On a CUDA GPU, --method {quantized.name} would need ~{gib(need)}."
    if not options:
        least = run.estimate(shape, batch=1, seq=16)
        return (
            f"Even 1 row of 16 tokens with gradient checkpointing needs {gib(least.total)}: "
            f"use a smaller model or a machine with more memory.{hint}"
        )
    return "What would fit: " + "; ".join(options) + f"; or a smaller model.{hint}"
