"""`slmforge merge` streams the base shard by shard and must equal PEFT's `merge_and_unload`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmforge import progress
from slmforge.artifacts import read_manifest
from slmforge.errors import InputError
from slmforge.train.merge import merge_adapter

pytestmark = pytest.mark.integration

ADAPTERS = {
    "lora": dict(target_modules=["q_proj", "v_proj", "down_proj"]),
    "rslora-patterns": dict(
        target_modules=["q_proj", "o_proj"],
        use_rslora=True,
        rank_pattern={"o_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3},
    ),
    "dora": dict(target_modules=["q_proj", "up_proj"], use_dora=True),
    "embedding-and-saved-head": dict(
        target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]
    ),
}


def _adapter(base: Path, out: Path, seed: int = 0, **options) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **options)
    peft = get_peft_model(model, config)
    with torch.no_grad():  # move what PEFT initialises to identity (DoRA, saved modules) off it
        for name, param in peft.named_parameters():
            if "magnitude" in name or "modules_to_save" in name or "lora_B.bias" in name:
                param.add_(torch.randn_like(param) * 0.1)
    peft.save_pretrained(out)
    return out


def _peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.clone() for k, v in merged.state_dict().items()}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(path))
    return weights


def _max_diff(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    return max((got[k].float() - expected[k].float()).abs().max().item() for k in got)


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_streamed_merge_equals_peft(tiny_model, tmp_path, kind):
    base = tiny_model("llama")
    adapter = _adapter(base, tmp_path / "adapter", **ADAPTERS[kind])
    out = merge_adapter(adapter, tmp_path / "merged", base=str(base))
    got, expected = _weights(out), _peft_merged(base, adapter)
    assert set(got) == set(expected)
    assert _max_diff(got, expected) < 1e-6
    assert _max_diff(got, load_file(base / "model.safetensors")) > 1e-2  # it did change
    manifest = read_manifest(out)
    assert manifest.kind == "model" and manifest.details == {"merged_from": "adapter"}
    assert manifest.config == {"dtype": "auto"} and manifest.stop and manifest.chat_template
    assert manifest.source["base_model"].sha256 and manifest.source["adapter"].sha256
    assert {"config.json", "generation_config.json", "model.safetensors"} <= set(manifest.files)


def test_lora_bias_is_merged_into_the_base_bias(tiny_model, tmp_path):
    base = tiny_model("qwen2")  # Qwen2's q/k/v projections have biases
    adapter = _adapter(base, tmp_path / "adapter", target_modules=["q_proj"], lora_bias=True)
    got = _weights(merge_adapter(adapter, tmp_path / "merged", base=str(base)))
    assert _max_diff(got, _peft_merged(base, adapter)) < 1e-6


def _bf16_sharded_copy(base: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_sharded_bf16_base_keeps_its_layout_and_dtype(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    base = _bf16_sharded_copy(tiny_model("llama"), tmp_path / "bf16")
    adapter = _adapter(base, tmp_path / "adapter", target_modules=["q_proj", "gate_proj"])
    out = merge_adapter(adapter, tmp_path / "merged", base=str(base))
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert (
        index["weight_map"]
        == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    )
    got, expected = _weights(out), _peft_merged(base, adapter)
    assert all(t.dtype == torch.bfloat16 for t in got.values())
    for name, tensor in got.items():  # one bf16 rounding of the same fp32 sum, at most
        assert torch.allclose(tensor.float(), expected[name].float(), rtol=2**-7, atol=1e-6), name
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16

    as_fp32 = merge_adapter(adapter, tmp_path / "fp32", base=str(base), dtype="float32")
    assert json.loads((as_fp32 / "config.json").read_text())["dtype"] == "float32"
    assert all(t.dtype == torch.float32 for t in _weights(as_fp32).values())


def _random_copy(base: Path, out: Path, **changes) -> Path:
    """A randomly initialised model of `base`'s config with `changes`, with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_tied_embeddings(tiny_model, tmp_path, monkeypatch):
    base = _random_copy(tiny_model("llama"), tmp_path / "tied", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(base / "model.safetensors")
    plain = _adapter(base, tmp_path / "plain", target_modules=["q_proj"])
    got = _weights(merge_adapter(plain, tmp_path / "merged", base=str(base)))
    assert "lm_head.weight" not in got and _max_diff(got, _peft_merged(base, plain)) < 1e-6

    warnings: list[str] = []
    monkeypatch.setattr(progress, "warn", warnings.append)
    head = _adapter(base, tmp_path / "head", target_modules=["q_proj", "lm_head"])
    out = merge_adapter(head, tmp_path / "head-merged", base=str(base))
    assert warnings == [
        "merge: the adapter changes lm_head, whose weights are tied to the embeddings; "
        "merging in memory with PEFT instead (holds the whole model)"
    ]
    expected = _peft_merged(base, head)
    assert _max_diff(_weights(out), expected) < 1e-6


def test_adapter_of_another_base_is_refused(tiny_model, tmp_path):
    llama = tiny_model("llama")
    adapter = _adapter(llama, tmp_path / "adapter", target_modules=["q_proj"])
    other = _random_copy(llama, tmp_path / "wider", num_attention_heads=8, num_key_value_heads=4)
    with pytest.raises(InputError, match="the adapter does not fit this base model"):
        merge_adapter(adapter, tmp_path / "merged", base=str(other))
    assert not (tmp_path / "merged").exists()
