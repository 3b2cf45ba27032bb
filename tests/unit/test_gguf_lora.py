"""PEFT adapters as llama.cpp LoRA pairs: PEFT's per-module scale folded into B, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("gguf")

from slmforge.errors import InputError
from slmforge.optimize.gguf.lora import read_adapter

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"


def _adapter(folder, **config):
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors = {}
    for module, rank in ((Q, 4), (V, 2)):
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = torch.tensor(rng.normal(size=(rank, 8)))
        tensors[f"{prefix}.lora_B.weight"] = torch.tensor(rng.normal(size=(6, rank)))
    save_file(
        {k: v.float().contiguous() for k, v in tensors.items()},
        folder / "adapter_model.safetensors",
    )
    base = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(base | config))
    return folder, {k: v.float().numpy() for k, v in tensors.items()}


def _peft_delta(raw, module, scale):
    a = raw[f"base_model.model.{module}.lora_A.weight"]
    b = raw[f"base_model.model.{module}.lora_B.weight"]
    return scale * (b @ a)


def test_plain_lora_keeps_alpha_over_rank(tmp_path):
    folder, raw = _adapter(tmp_path / "a", rank_pattern={"v_proj": 2})
    adapter = read_adapter("a", folder)
    assert adapter.alpha == 8.0
    assert np.allclose(adapter.delta(f"{Q}.weight"), _peft_delta(raw, Q, 8 / 4), atol=1e-6)
    assert np.allclose(adapter.delta(f"{V}.weight"), _peft_delta(raw, V, 8 / 2), atol=1e-6)
    assert adapter.delta("model.layers.0.mlp.up_proj.weight") is None


def test_rslora_and_alpha_pattern_fold_into_b(tmp_path):
    """llama.cpp scales by alpha/rank; rsLoRA's alpha/sqrt(rank) and a per-module alpha come
    out right because B carries the difference."""
    folder, raw = _adapter(tmp_path / "a", use_rslora=True, alpha_pattern={"v_proj": 3})
    adapter = read_adapter("a", folder)
    assert np.allclose(adapter.delta(f"{Q}.weight"), _peft_delta(raw, Q, 8 / 2), atol=1e-6)
    expected_v = _peft_delta(raw, V, 3 / math.sqrt(2))
    assert np.allclose(adapter.delta(f"{V}.weight"), expected_v, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "only LoRA adapters convert to GGUF"),
        ({"peft_type": "IA3"}, "only LoRA adapters convert to GGUF"),
        ({"modules_to_save": ["lm_head"]}, "llama.cpp adapters hold LoRA pairs only"),
    ],
)
def test_refused_adapters(tmp_path, config, message):
    folder, _ = _adapter(tmp_path / "a", **config)
    with pytest.raises(InputError, match=message):
        read_adapter("a", folder)
