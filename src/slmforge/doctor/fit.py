"""Will it fit? Memory for fine-tuning and for inference of a model, from its config alone.

Fine-tuning, per process, is the sum of:
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
activations are already freed. The integration test compares it with the peak memory of a real
run of the `small` model (tests/integration/test_doctor_fit.py); docs/setup.md has the figures.

Inference (ONNX Runtime GenAI, as `slmforge optimize` builds it): weights at the chosen
precision (int4/int8 blocks of 32 with one scale each; embeddings stay in the float I/O dtype),
the KV cache for the whole context, the prompt's logits and one layer's working set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmforge.config.doctor import FitConfig
from slmforge.errors import MissingDependencyError, ModelError

GIB = 1024**3
MIB = 1024**2
_RUNTIME = {"cpu": 450 * MIB, "mps": 450 * MIB, "cuda": 512 * MIB}  # train: torch, context
_INFER_RUNTIME = {"cpu": 150 * MIB, "mps": 150 * MIB, "cuda": 512 * MIB}  # onnxruntime(-genai)
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_NF4_BITS = 4.127  # 4-bit weights + double-quantized absmax per 64 (QLoRA paper, section 2)
_BLOCK = 32  # int4/int8 quantization block of the ONNX builder (one scale per block)
_NORM_UNITS = 6  # two RMSNorms, each keeping input, rsqrt product and output in fp32
_LOGIT_FP32_COPIES = 3  # fp32 copy of the shifted logits, log-softmax output, its gradient
_MAX_BATCH = 4096


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model that memory depends on."""

    model_type: str
    params: int
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    context: int | None

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def layer_linear_params(self) -> int:
        """Parameters of every linear layer inside the decoder blocks (not the LM head)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + q * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden


def _need(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelError(f"the model's config.json has no {keys[0]}; is it a decoder-only LM?")


def _bias_params(config: dict[str, Any], shape: ModelShape) -> int:
    """Bias parameters of one layer: Qwen2 has q/k/v biases; `attention_bias` and
    `mlp_bias` add them to every projection."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    biases = q + 2 * kv if shape.model_type == "qwen2" else 0
    if config.get("attention_bias"):
        biases = q + 2 * kv + shape.hidden
    if config.get("mlp_bias"):
        biases += 2 * shape.intermediate + shape.hidden
    return biases


def shape_from_config(config: dict[str, Any], parameters: int | None) -> ModelShape:
    """A `ModelShape` from config.json values; parameters counted from the config if unknown."""
    hidden = _need(config, "hidden_size", "n_embd", "d_model")
    heads = _need(config, "num_attention_heads", "n_head")
    shape = ModelShape(
        model_type=str(config.get("model_type", "")),
        params=0,
        vocab=_need(config, "vocab_size"),
        hidden=hidden,
        layers=_need(config, "num_hidden_layers", "n_layer"),
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        tied=bool(config.get("tie_word_embeddings", False)),
        context=config.get("max_position_embeddings"),
    )
    counted = (
        shape.embedding_params
        + shape.head_params
        + shape.layer_linear_params
        + (2 * shape.layers + 1) * hidden  # RMSNorm weights
        + shape.layers * _bias_params(config, shape)
    )
    return ModelShape(**{**shape.__dict__, "params": parameters or counted})


def read_shape(model: str, trust_remote_code: bool = False) -> ModelShape:
    from slmforge.models.load import read_model_config

    try:
        config, parameters = read_model_config(model, trust_remote_code)
    except ImportError:
        raise MissingDependencyError(
            "transformers", "train", "reading a hub model's config"
        ) from None
    return shape_from_config(config, parameters)


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
    if method == "full":
        return shape.params
    modules = lora_modules(shape)
    per_layer = sum(rank * (n_in + n_out) for n_in, n_out in modules)
    if method == "dora":
        per_layer += sum(n_out for _, n_out in modules)  # the magnitude vectors
    return shape.layers * per_layer


# -- fine-tuning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Bytes by component; `total` is their sum."""

    components: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.components.values())


def train_dtype(requested: str, device: str) -> str:
    """The compute dtype `slmforge finetune --precision` would pick on `device`."""
    if requested != "auto":
        return requested
    return "bf16" if device == "cuda" else "fp32"


def _weights(shape: ModelShape, method: str, dtype: str) -> int:
    if method == "full":
        return shape.params * 4  # full fine-tuning keeps fp32 master weights
    if method == "qlora":
        linear = shape.layer_linear_params
        return int(linear * _NF4_BITS / 8) + (shape.params - linear) * _DTYPE_BYTES[dtype]
    return shape.params * _DTYPE_BYTES[dtype]


def activation_bytes_per_token(
    shape: ModelShape, method: str, dtype: str, gradient_checkpointing: bool
) -> int:
    """What autograd keeps per token of a micro-batch, over all layers (logits excluded)."""
    b, h = _DTYPE_BYTES[dtype], shape.hidden
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    saved = h + 2 * (q + kv) + kv  # projection input, q/k and their rotary copies, v
    saved += 2 * q if kv < q else 0  # keys and values repeated to every head (GQA)
    saved += 2 * q + h  # attention output, o_proj input, MLP input
    saved += 4 * shape.intermediate  # gate, activation, up, product
    if method != "full":
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
) -> Estimate:
    tokens = batch * seq
    trainable = trainable_params(shape, method, rank)
    state_bytes = 12 if method == "full" else 16  # (+ fp32 copy) + gradient + two moments
    logit_bytes = _DTYPE_BYTES[dtype] + 4 * _LOGIT_FP32_COPIES
    per_token = activation_bytes_per_token(shape, method, dtype, gradient_checkpointing)
    activations = tokens * per_token
    if method == "dora":  # DoRA builds each adapted weight (W + BA) and its norm every step
        merged = sum(n_in * n_out for n_in, n_out in lora_modules(shape))
        activations += 2 * shape.layers * merged * _DTYPE_BYTES[dtype]
    return Estimate(
        {
            "runtime": _RUNTIME.get(device, _RUNTIME["cpu"]),
            "weights": _weights(shape, method, dtype),
            "optimizer": trainable * state_bytes,
            "activations": activations,
            "logits": tokens * shape.vocab * logit_bytes,
        }
    )


def _largest(fits: Any, low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), assuming fits is monotone; low-1 if none."""
    if not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


# -- inference -----------------------------------------------------------------------------------
def inference_estimate(shape: ModelShape, precision: str, device: str, context: int) -> Estimate:
    """One sequence of `context` tokens with an ONNX Runtime GenAI model of `precision`."""
    io_bytes = 4 if device == "cpu" and precision in ("fp32", "int4", "int8") else 2
    if precision in ("int4", "int8"):
        bits = 4 if precision == "int4" else 8
        per_weight = (bits + io_bytes * 8 / _BLOCK) / 8  # plus one scale per block
        head = shape.head_params or shape.embedding_params  # a tied head is quantized apart
        weights = shape.embedding_params * io_bytes
        weights += int(
            (shape.params - shape.embedding_params - shape.head_params + head) * per_weight
        )
    else:
        weights = shape.params * _DTYPE_BYTES[precision]
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * context * io_bytes
    working = context * (shape.vocab * 4 + (2 * shape.intermediate + 4 * shape.hidden) * io_bytes)
    return Estimate(
        {
            "runtime": _INFER_RUNTIME.get(device, _INFER_RUNTIME["cpu"]),
            "weights": weights,
            "kv_cache": kv_cache,
            "activations": working,
        }
    )


# -- the check -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitReport:
    """The fit check's result; `available` is None when the device is not on this machine."""

    config: FitConfig
    shape: ModelShape
    device: str
    available: int | None
    dtype: str
    trainable: int
    finetune: Estimate
    inference: Estimate
    max_batch_size: int
    max_seq_len: int
    problems: list[str]

    @property
    def finetune_fits(self) -> bool | None:
        return None if self.available is None else self.finetune.total <= self.available

    @property
    def inference_fits(self) -> bool | None:
        return None if self.available is None else self.inference.total <= self.available

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "model": cfg.model,
            "device": self.device,
            "available_bytes": self.available,
            "parameters": self.shape.params,
            "problems": self.problems,
            "finetune": {
                "method": cfg.method,
                "precision": self.dtype,
                "batch_size": cfg.batch_size,
                "max_seq_len": cfg.max_seq_len,
                "gradient_checkpointing": cfg.gradient_checkpointing,
                "trainable_params": self.trainable,
                "components_bytes": self.finetune.components,
                "total_bytes": self.finetune.total,
                "fits": self.finetune_fits,
                "largest_batch_size": self.max_batch_size,
                "largest_seq_len": self.max_seq_len,
            },
            "inference": {
                "precision": cfg.precision,
                "context": cfg.max_seq_len,
                "components_bytes": self.inference.components,
                "total_bytes": self.inference.total,
                "fits": self.inference_fits,
            },
        }


def _problems(cfg: FitConfig, device: str, dtype: str) -> list[str]:
    problems = []
    if cfg.method == "qlora" and device != "cuda":
        problems.append(
            f"--method qlora needs a CUDA GPU (bitsandbytes 4-bit); this check is for '{device}'"
        )
    if device == "cpu" and dtype == "fp16":
        problems.append("--train-precision fp16 is not supported for training on CPU")
    return problems


def check_fit(
    cfg: FitConfig, device: str, available: int | None, shape: ModelShape | None = None
) -> FitReport:
    """Estimate `cfg`'s memory on `device` (auto already resolved) against `available` bytes;
    `shape` is read from the model's config unless given."""
    shape = shape or read_shape(cfg.model, cfg.trust_remote_code)
    dtype = train_dtype(cfg.train_precision, device)

    def train(batch: int, seq: int) -> Estimate:
        return finetune_estimate(
            shape,
            cfg.method,
            dtype,
            device,
            batch,
            seq,
            cfg.lora_r,
            cfg.gradient_checkpointing,
        )

    limit = available if available is not None else 0
    context = shape.context or cfg.max_seq_len
    return FitReport(
        config=cfg,
        shape=shape,
        device=device,
        available=available,
        dtype=dtype,
        trainable=trainable_params(shape, cfg.method, cfg.lora_r),
        finetune=train(cfg.batch_size, cfg.max_seq_len),
        inference=inference_estimate(shape, cfg.precision, device, cfg.max_seq_len),
        max_batch_size=_largest(lambda b: train(b, cfg.max_seq_len).total <= limit, 1, _MAX_BATCH),
        max_seq_len=_largest(lambda s: train(cfg.batch_size, s).total <= limit, 1, context),
        problems=_problems(cfg, device, dtype),
    )
