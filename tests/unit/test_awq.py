"""AWQ (optimize/awq.py): the scale search beats round-to-nearest where activations have outlier
channels, and folding the scales leaves the model's function unchanged."""

from __future__ import annotations

import pytest
import torch

from slmforge.optimize.awq import scale_groups, scale_model, search_clip, search_scale
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


def _output_error(x: torch.Tensor, rounded: torch.Tensor, weight: torch.Tensor) -> float:
    return float(((x @ (rounded - weight).T) ** 2).mean())


def test_clip_search_lowers_the_output_error_of_weights_with_outliers():
    """Clipping a block's outlier weight gives the rest a finer grid: on the calibration rows
    the clipped-then-rounded weight is closer than plain round-to-nearest, and never worse,
    because ratio 1 (no clipping) is in the search."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 128, generator=g)
    weight = torch.randn(96, 128, generator=g)
    spikes = torch.rand(96, 128, generator=g) < 0.01
    weight[spikes] *= 8  # a few large weights, as trained LLMs have
    clipped, ratios = search_clip(x, weight, 4, 32, True)
    plain = _output_error(x, rtn(weight).dequantize(), weight)
    searched = _output_error(x, rtn(clipped).dequantize(), weight)
    assert ratios.shape == (96, 4) and (ratios < 1).any()
    assert searched < 0.97 * plain, (searched, plain)
    calm = torch.randn(32, 64, generator=g)  # no outliers: clipping helps little, never hurts
    x_calm = torch.randn(256, 64, generator=g)
    clipped_calm, _ = search_clip(x_calm, calm, 4, 32, True)
    assert _output_error(x_calm, rtn(clipped_calm).dequantize(), calm) <= _output_error(
        x_calm, rtn(calm).dequantize(), calm
    )


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
    applied = scale_model(model, windows, 4, 32, True, clip=False)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert len(applied) == 2 * len(groups) + 1  # and the (untied) LM head's group
    assert applied[-1].group.producer == "model.norm" and applied[-1].module("lm_head") == "lm_head"
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    assert any(a.alpha > 0 for a in applied)  # the outlier channels were scaled
    norm = model.model.layers[0].input_layernorm.weight
    assert norm[:3].max() < 20.0  # 1/s went into the norm


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_rescaled_lora_on_the_scaled_base_is_the_same_model(arch):
    """A LoRA adapter on every Linear: after AWQ scales the base, `rescale_lora` gives an
    adapter that computes what the original did on the original base (lora_A reads x / s,
    producer lora_B rows are divided by s, fused rows included); the unchanged adapter does
    not."""
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    from slmforge.optimize.awq import rescale_lora

    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    if arch == "llama":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        targets.append("lm_head")  # reads the scaled final norm
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    windows = [
        torch.randint(0, 96, (40,), generator=torch.Generator().manual_seed(i)).tolist()
        for i in range(3)
    ]
    ids = torch.tensor([windows[0]])
    torch.manual_seed(3)
    original = get_peft_model(_tiny(arch), config).eval()
    tensors = get_peft_model_state_dict(original)
    with torch.no_grad():
        expected = original(input_ids=ids).logits
    scaled_base = _tiny(arch)
    applied = scale_model(scaled_base, windows, 4, 32, True, clip=False)
    assert any(float((a.scale - 1).abs().max()) > 0.5 for a in applied)

    def logits(adapter: dict) -> torch.Tensor:
        model = get_peft_model(_tiny_scaled(arch, applied), config).eval()
        set_peft_model_state_dict(model, adapter)
        with torch.no_grad():
            return model(input_ids=ids).logits

    rescaled = logits(rescale_lora(tensors, applied))
    assert torch.allclose(rescaled, expected, atol=1e-4), (rescaled - expected).abs().max()
    assert not torch.allclose(logits(tensors), expected, atol=1e-2)


def _tiny_scaled(arch: str, applied: list) -> torch.nn.Module:
    """A fresh `_tiny(arch)` with the scales of `applied` folded in again."""
    from slmforge.optimize.awq import apply_scale

    model = _tiny(arch)
    layers = dict(model.named_modules())
    for a in applied:
        apply_scale(layers[a.layer], a.group, a.scale)
    return model
