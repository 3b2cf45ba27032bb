"""AWQ (optimize/awq.py): the scale search beats round-to-nearest where activations have outlier
channels, and folding the scales leaves the model's function unchanged."""

from __future__ import annotations

import pytest
import torch

from slmforge.optimize.awq import scale_groups, scale_model, search_scale
from slmforge.optimize.gptq import rtn


def _outlier_inputs(tokens: int, features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, features, generator=g)
    x[:, :6] *= 25  # a few channels carry most of the activation, as in real LLMs
    return x


def test_scale_search_lowers_the_output_error_on_outlier_channels():
    x = _outlier_inputs(512, 128)
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(1))
    exact = x @ weight.T
    scale, alpha = search_scale(x, x.abs().mean(0), weight, 4, 32, True)
    scaled = rtn(weight * scale).dequantize() / scale
    plain = float(((x @ rtn(weight).dequantize().T - exact) ** 2).mean())
    searched = float(((x @ scaled.T - exact) ** 2).mean())
    assert alpha > 0 and searched < 0.7 * plain, (alpha, searched, plain)


def test_scale_search_keeps_round_to_nearest_when_nothing_stands_out():
    """alpha = 0 (s = 1) is in the grid: the search never does worse than RTN on its rows."""
    x = torch.randn(256, 64)
    weight = torch.randn(32, 64)
    scale, _ = search_scale(x, x.abs().mean(0), weight, 4, 32, True)
    exact = x @ weight.T
    searched = ((x @ (rtn(weight * scale).dequantize() / scale).T - exact) ** 2).mean()
    assert searched <= ((x @ rtn(weight).dequantize().T - exact) ** 2).mean()


def _tiny(arch: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

    torch.manual_seed(0)
    shape = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2}
    shape |= {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "llama":  # grouped-query attention: no v -> o group
        config = LlamaConfig(**shape, num_attention_heads=4, num_key_value_heads=2)
    else:  # phi3: fused qkv and gate_up, full multi-head attention: v -> o is scaled too
        config = Phi3Config(**shape, num_attention_heads=4, num_key_value_heads=4)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # outlier channels in every norm, as trained models have
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] = 20.0
            layer.post_attention_layernorm.weight[5:8] = 15.0
    return model


@pytest.mark.parametrize(
    ("arch", "groups"),
    [
        ("llama", ["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"]),
        ("phi3", ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]),
    ],
)
def test_folded_scales_leave_the_model_unchanged(arch, groups):
    model = _tiny(arch)
    assert [g.linears[0] for g in scale_groups(model.model.layers[0])] == groups
    windows = [
        torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(i)).tolist()
        for i in range(3)
    ]
    ids = torch.tensor([windows[0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    alphas = scale_model(model, windows, 4, 32, True)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert len(alphas) == 2 * len(groups)
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    assert any(alpha > 0 for alpha in alphas.values())  # the outlier channels were scaled
    norm = model.model.layers[0].input_layernorm.weight
    assert norm[:3].max() < 20.0  # 1/s went into the norm
