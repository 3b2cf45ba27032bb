"""GGUF writer pieces that need no model: names, RoPE permutation and scaling, tensor types."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")

from slmforge.errors import InputError
from slmforge.optimize.gguf.families import (
    FAMILIES,
    family_of,
    gguf_name,
    permute_rows,
    rope_heads,
    unpermute_rows,
)
from slmforge.optimize.gguf.writer import tensor_type

LLAMA = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}


@pytest.mark.parametrize(
    ("arch", "hf", "expected"),
    [
        ("llama", "model.embed_tokens.weight", "token_embd.weight"),
        ("llama", "model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"),
        ("mistral", "model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
        ("qwen2", "model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias"),
        ("qwen2", "lm_head.weight", "output.weight"),
        ("phi3", "model.layers.1.self_attn.qkv_proj.weight", "blk.1.attn_qkv.weight"),
        ("phi3", "model.layers.0.mlp.gate_up_proj.weight", "blk.0.ffn_up.weight"),
        ("phi3", "model.layers.0.self_attn.q_proj.weight", None),
        ("llama", "model.layers.0.self_attn.rotary_emb.inv_freq", None),
    ],
)
def test_llama_cpp_names(arch, hf, expected):
    assert gguf_name(FAMILIES[arch], hf) == expected


def test_families_map_to_llama_cpp_architectures():
    assert {name: f.arch for name, f in FAMILIES.items()} == {
        "llama": "llama",
        "mistral": "llama",  # llama.cpp converts Mistral as llama
        "qwen2": "qwen2",
        "phi3": "phi3",
    }
    with pytest.raises(InputError, match="GGUF export supports llama, mistral, qwen2, phi3"):
        family_of({"model_type": "gpt2"})


def test_rope_permutation_only_for_llama_q_and_k():
    llama, qwen = FAMILIES["llama"], FAMILIES["qwen2"]
    assert rope_heads(llama, "blk.0.attn_q.weight", LLAMA) == 4
    assert rope_heads(llama, "blk.0.attn_k.weight", LLAMA) == 2
    assert rope_heads(llama, "blk.0.attn_v.weight", LLAMA) is None
    assert rope_heads(qwen, "blk.0.attn_q.weight", LLAMA) is None


def test_permutation_interleaves_halves_and_inverts():
    # one head of 4 rows: halves [0, 1 | 2, 3] -> pairs (0, 2), (1, 3)
    rows = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    assert permute_rows(rows, 1)[:, 0].tolist() == [0, 2, 1, 3]
    weight = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    assert np.array_equal(unpermute_rows(permute_rows(weight, 4), 4), weight)
    bias = np.arange(64, dtype=np.float32)
    assert np.array_equal(unpermute_rows(permute_rows(bias, 4), 4), bias)


def test_llama3_rope_factors_match_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    plain = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    extra = FAMILIES["llama"].extra_tensors(config.to_dict())
    expected = (plain / scaled.double()).numpy()
    assert np.allclose(extra["rope_freqs.weight"], expected, rtol=1e-5)
    assert FAMILIES["llama"].extra_tensors(LLAMA | {"rope_theta": 1e4}) == {}


def _metadata(arch: str, config: dict) -> dict:
    import gguf

    writer = gguf.GGUFWriter(None, FAMILIES[arch].arch)
    FAMILIES[arch].hparams(writer, config)
    return {key: value.value for key, value in writer.kv_data[0].items()}


BASE = {
    "num_hidden_layers": 2,
    "max_position_embeddings": 4096,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 2048,
}


def test_linear_rope_scaling_and_theta_in_metadata():
    meta = _metadata(
        "llama",
        BASE | {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
    )
    assert meta["llama.rope.freq_base"] == 5e5
    assert meta["llama.rope.scaling.type"] == "linear"
    assert meta["llama.rope.scaling.factor"] == 2.0
    assert meta["llama.rope.dimension_count"] == 32
    assert meta["llama.vocab_size"] == 2048


def test_phi3_longrope_and_sliding_window():
    rope = {
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "long_factor": [1.5] * 16,
        "short_factor": [1.0] * 16,
        "original_max_position_embeddings": 1024,
    }
    config = BASE | {"rope_parameters": rope, "sliding_window": 2047}
    meta = _metadata("phi3", config)
    assert meta["phi3.rope.scaling.type"] == "longrope"
    assert meta["phi3.rope.scaling.original_context_length"] == 1024
    assert meta["phi3.attention.sliding_window"] == 2047
    assert meta["phi3.rope.scaling.attn_factor"] > 1.0
    extra = FAMILIES["phi3"].extra_tensors(config)
    assert extra["rope_factors_long.weight"].tolist() == [1.5] * 16


def test_unknown_rope_scaling_is_refused():
    with pytest.raises(InputError, match="RoPE scaling 'dynamic'"):
        _metadata("qwen2", BASE | {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})


def test_tensor_types_per_precision():
    assert tensor_type("q4_0", "blk.0.attn_norm.weight", (128,)).name == "F32"
    assert tensor_type("q4_0", "blk.0.attn_q.weight", (128, 128)).name == "Q4_0"
    assert tensor_type("q4_0", "token_embd.weight", (2048, 128)).name == "Q8_0"
    assert tensor_type("q8_0", "blk.0.ffn_down.weight", (128, 344)).name == "F16"  # 344 % 32
    assert tensor_type("f16", "blk.0.attn_q.weight", (128, 128)).name == "F16"
    assert tensor_type("f16", "rope_freqs.weight", (16,)).name == "F32"


def test_pre_tokenizer_names(tmp_path):
    from slmforge.optimize.gguf.tokenizer import LLAMA3_REGEX, QWEN2_REGEX, pre_tokenizer_name

    def split_then_bytes(regex: str) -> dict:
        steps = [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
        ]
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": steps}}

    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel"}}, tmp_path) == "gpt-2"
    assert pre_tokenizer_name(split_then_bytes(LLAMA3_REGEX), tmp_path) == "llama-bpe"
    assert pre_tokenizer_name(split_then_bytes(QWEN2_REGEX), tmp_path) == "qwen2"
    with pytest.raises(InputError, match=r"no known llama\.cpp counterpart"):
        pre_tokenizer_name(split_then_bytes(r"\p{N}+"), tmp_path)


def test_sliding_windows_llama_cpp_would_ignore():
    from slmforge.optimize.gguf.families import ignored_sliding_window

    mistral = BASE | {"sliding_window": 1024}
    assert ignored_sliding_window(FAMILIES["mistral"], mistral) == 1024
    assert ignored_sliding_window(FAMILIES["mistral"], BASE | {"sliding_window": None}) is None
    assert ignored_sliding_window(FAMILIES["phi3"], mistral) is None  # phi3 applies it
    assert ignored_sliding_window(FAMILIES["qwen2"], mistral) is None  # use_sliding_window off
    qwen = mistral | {"use_sliding_window": True}
    assert ignored_sliding_window(FAMILIES["qwen2"], qwen) == 1024


def test_model_name_avoids_llama_cpps_phi3_token_lookup():
    from slmforge.optimize.gguf.writer import model_name

    spm_tokens = ["</s>", "<unk>", "<s>", "<|endoftext|>"]
    assert model_name("phi3", ["<|endoftext|>"]) == "phi 3"
    assert model_name("Phi-3.5-mini-instruct", ["a"]) == "Phi 3.5-mini-instruct"
    assert model_name("Phi-3.5-mini-instruct", spm_tokens) == "Phi-3.5-mini-instruct"
    assert model_name("qwen2", ["a"]) == "qwen2"
