"""The model families the GGUF writer knows, by Hugging Face `model_type`.

Each family says which llama.cpp architecture reads it, how a Hugging Face tensor name becomes
llama.cpp's (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`), whether the
q/k rows are permuted, and which hyper-parameters go in the metadata, as llama.cpp's own
converter (convert_hf_to_gguf.py) writes them.

RoPE layouts: Hugging Face rotates the two halves of each head (`rotate_half`). llama.cpp's
`llama` architecture rotates interleaved pairs, so its converter permutes the q and k rows of
Llama and Mistral; `qwen2` and `phi3` use llama.cpp's NEOX RoPE, which is the halves layout,
so their rows stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slmforge.errors import InputError

# Hugging Face name after `model.layers.N.` -> llama.cpp name after `blk.N.`
COMMON_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Phi-3 keeps q/k/v in one projection and gate/up in one; llama.cpp's phi3 reads them fused
# (`attn_qkv`, and `ffn_up` twice as tall, split into gate and up at run time).
PHI3_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
}


@dataclass(frozen=True)
class Family:
    model_type: str  # Hugging Face config.json "model_type"
    arch: str  # llama.cpp architecture (general.architecture)
    layer_tensors: dict[str, str]
    permute_qk: bool  # q/k rows from halves to interleaved pairs (llama.cpp "norm" RoPE)
    hparams: Callable[[Any, dict[str, Any]], None]  # (GGUFWriter, config.json) -> metadata
    extra_tensors: Callable[[dict[str, Any]], dict[str, Any]]  # name -> f32 array


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings: transformers 5 keeps them in `rope_parameters`, older configs spread
    them over `rope_theta` and `rope_scaling`; merged, the newer form wins."""
    merged = {"rope_theta": config.get("rope_theta", 10000.0)}
    merged |= config.get("rope_scaling") or {}
    merged |= config.get("rope_parameters") or {}
    if "type" in merged and "rope_type" not in merged:
        merged["rope_type"] = merged["type"]
    return merged


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _common_hparams(writer: Any, config: dict[str, Any]) -> None:
    """What llama.cpp's converter writes for every text model."""
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    _rope_scaling(writer, rope)


def _rope_scaling(writer: Any, rope: dict[str, Any]) -> None:
    """Linear and YaRN scaling are metadata; llama3 and longrope travel as factor tensors
    (`extra_tensors`), as llama.cpp reads them."""
    import gguf

    kind, factor = rope.get("rope_type", "default"), rope.get("factor")
    if kind == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind in ("longrope", "su"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif kind not in ("default", "llama3"):
        raise InputError(
            f"RoPE scaling {kind!r} has no GGUF equivalent here (known: linear, yarn, llama3, "
            "longrope)"
        )


def _llama_hparams(writer: Any, config: dict[str, Any]) -> None:
    _common_hparams(writer, config)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim(config))


def _phi3_hparams(writer: Any, config: dict[str, Any]) -> None:
    """llama.cpp's phi3 entry: its own set (no vocab size), the rotary share of each head,
    the original context for longrope, and the sliding window (0: none)."""
    rope = rope_parameters(config)
    _common_hparams(writer, config)
    rotary = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    writer.add_rope_dimension_count(
        int(rotary * config["hidden_size"]) // config["num_attention_heads"]
    )
    writer.add_rope_scaling_orig_ctx_len(int(_original_context(config)))
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if rope.get("rope_type") in ("longrope", "su"):
        writer.add_rope_scaling_attn_factors(_longrope_attn_factor(config))


def _original_context(config: dict[str, Any]) -> int:
    rope = rope_parameters(config)
    return int(
        rope.get("original_max_position_embeddings")
        or config.get("original_max_position_embeddings")
        or config["max_position_embeddings"]
    )


def _longrope_attn_factor(config: dict[str, Any]) -> float:
    """Phi-3's attention scale for contexts past the original one (its modeling code's)."""
    scale = config["max_position_embeddings"] / _original_context(config)
    if scale <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(scale) / math.log(_original_context(config)))


def _no_extra(config: dict[str, Any]) -> dict[str, Any]:
    return {}


def _llama3_rope_freqs(config: dict[str, Any]) -> dict[str, Any]:
    """Llama 3.1's frequency-dependent RoPE scaling as llama.cpp takes it: one divisor per
    rotary frequency (`rope_freqs.weight`) = original frequency / scaled frequency."""
    import numpy as np

    rope = rope_parameters(config)
    if rope.get("rope_type") != "llama3":
        return {}
    dim = head_dim(config)
    base = float(rope["rope_theta"])
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_context = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / freqs
    # long wavelengths are slowed by `factor`, short ones kept, the band between blended
    smooth = np.clip((old_context / wavelen - low) / (high - low), 0.0, 1.0)
    scaled = (1 - smooth) * freqs / factor + smooth * freqs
    return {"rope_freqs.weight": (freqs / scaled).astype(np.float32)}


def _phi3_rope_factors(config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    rope = rope_parameters(config)
    if rope.get("rope_type") not in ("longrope", "su"):
        return {}
    return {
        "rope_factors_long.weight": np.asarray(rope["long_factor"], dtype=np.float32),
        "rope_factors_short.weight": np.asarray(rope["short_factor"], dtype=np.float32),
    }


_LLAMA = dict(
    arch="llama",
    layer_tensors=COMMON_LAYER_TENSORS,
    permute_qk=True,
    hparams=_llama_hparams,
    extra_tensors=_llama3_rope_freqs,
)
FAMILIES: dict[str, Family] = {
    "llama": Family("llama", **_LLAMA),  # type: ignore[arg-type]
    # llama.cpp converts Mistral as `llama` (same tensors, same RoPE permutation)
    "mistral": Family("mistral", **_LLAMA),  # type: ignore[arg-type]
    "qwen2": Family("qwen2", "qwen2", COMMON_LAYER_TENSORS, False, _common_hparams, _no_extra),
    "phi3": Family("phi3", "phi3", PHI3_LAYER_TENSORS, False, _phi3_hparams, _phi3_rope_factors),
}


def family_of(config: dict[str, Any]) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(f"GGUF export supports {', '.join(FAMILIES)} models, not {model_type!r}")
    return FAMILIES[model_type]


def gguf_name(family: Family, hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face tensor name, or None for one it does not take."""
    module, _, kind = hf_name.rpartition(".")
    if module in TOP_TENSORS:
        return f"{TOP_TENSORS[module]}.{kind}"
    parts = module.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in family.layer_tensors:
        return f"blk.{parts[2]}.{family.layer_tensors[parts[3]]}.{kind}"
    return None


def rope_heads(family: Family, gguf_tensor: str, config: dict[str, Any]) -> int | None:
    """How many heads to permute the rows of `gguf_tensor` by (q: heads, k: kv heads)."""
    if not family.permute_qk:
        return None
    part = gguf_tensor.split(".")[2] if gguf_tensor.startswith("blk.") else ""
    if part == "attn_q":
        return int(config["num_attention_heads"])
    if part == "attn_k":
        return int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return None


def permute_rows(weight: Any, heads: int) -> Any:
    """Rows of each head from [first halves, second halves] to interleaved pairs."""
    rows = weight.shape[0]
    shape = (heads, 2, rows // heads // 2, *weight.shape[1:])
    return weight.reshape(shape).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rows(weight: Any, heads: int) -> Any:
    """The inverse of `permute_rows`: interleaved pairs back to halves."""
    rows = weight.shape[0]
    shape = (heads, rows // heads // 2, 2, *weight.shape[1:])
    return weight.reshape(shape).swapaxes(1, 2).reshape(weight.shape)


def ignored_sliding_window(family: Family, config: dict[str, Any]) -> int | None:
    """A sliding attention window the llama.cpp architecture will not apply (its `llama` and
    `qwen2` attend to the whole context; `phi3` reads the window from the metadata), or None.
    Outputs only differ past that many tokens, so the export goes on with a warning."""
    window = config.get("sliding_window")
    if family.arch == "phi3" or not window or window >= config["max_position_embeddings"]:
        return None
    if family.model_type == "qwen2" and not config.get("use_sliding_window"):
        return None
    return int(window)
