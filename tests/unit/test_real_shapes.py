"""`models init --like`: the registered shapes are the public models' exact shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from slmforge.config.shapes import SHAPES, get_shape
from slmforge.errors import InputError
from slmforge.models.real_shape import TensorSpec, hf_config, plan_shards, tensor_specs

TOKENIZER = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=2)
# Parameter counts the model cards publish (embedding counted once when tied).
PUBLIC_PARAMETERS = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "phi-3-mini-4k": 3_821_079_552,
    "phi-3.5-mini": 3_821_079_552,
    "mistral-7b-v0.3": 7_248_023_552,
}


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMETERS))
def test_each_shape_has_the_published_parameter_count(name: str) -> None:
    config = hf_config(get_shape(name), TOKENIZER, None, "bf16")
    specs = tensor_specs(config, "bf16")
    count = sum(spec.nbytes for spec in specs) // 2
    assert count == PUBLIC_PARAMETERS[name]
    assert ("lm_head.weight" in {s.name for s in specs}) != config.tie_word_embeddings


def test_rope_scaling_and_windows_are_kept() -> None:
    llama = hf_config(get_shape("llama-3.2-1b"), TOKENIZER, 2, "bf16")
    assert llama.rope_parameters["rope_type"] == "llama3"
    assert llama.rope_parameters["factor"] == 32.0 and llama.num_hidden_layers == 2
    phi35 = hf_config(get_shape("phi-3.5-mini"), TOKENIZER, None, "bf16")
    assert phi35.rope_parameters["rope_type"] == "longrope"
    assert len(phi35.rope_parameters["long_factor"]) == 48 and phi35.sliding_window == 262144
    assert hf_config(get_shape("phi-3-mini-4k"), TOKENIZER, None, "bf16").sliding_window == 2047
    qwen = hf_config(get_shape("qwen2.5-0.5b"), TOKENIZER, 2, "bf16")
    assert qwen.max_window_layers == 2 and qwen.vocab_size == 151936


def test_shards_stay_under_the_limit_and_keep_order() -> None:
    specs = [TensorSpec(f"t{i}", (i,), size) for i, size in enumerate([5, 5, 3, 9, 1])]
    shards = plan_shards(specs, limit=10)
    assert [[s.name for s in shard] for shard in shards] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    assert plan_shards([TensorSpec("big", (1,), 50)], limit=10)[0][0].name == "big"


def test_unknown_shape_names_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"qwen2\.5-0\.5b"):
        get_shape("gpt-5")
    assert set(SHAPES) == set(PUBLIC_PARAMETERS)
