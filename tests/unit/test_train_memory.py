"""The memory check `slmforge finetune` runs before loading weights, and the precision it picks."""

from __future__ import annotations

import re

import pytest

from slmforge import progress
from slmforge.errors import InputError
from slmforge.train import memory
from slmforge.train.memory import (
    GIB,
    MIB,
    RunShape,
    check_run,
    merge_estimate,
    train_dtype,
    trainable_params,
)
from slmforge.train.shape import shape_from_config

# Qwen2.5-0.5B's published config (494M parameters, tied embeddings, bf16 weights).
QWEN25_05B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
SHAPE = shape_from_config(QWEN25_05B, None)
RUN = RunShape("lora", "fp32", "cpu", batch=4, seq=512, rank=16, gradient_checkpointing=False)


@pytest.fixture
def said(monkeypatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(progress, "info", lambda m: lines.append("info: " + m))
    monkeypatch.setattr(progress, "warn", lambda m: lines.append("warn: " + m))
    return lines


def test_the_checkpoint_dtype_is_read_from_the_config() -> None:
    assert SHAPE.dtype == "bf16" and SHAPE.params == 494_032_768
    assert shape_from_config({**QWEN25_05B, "torch_dtype": None, "dtype": "float32"}, 1).dtype == (
        "fp32"
    )


@pytest.mark.parametrize(
    ("requested", "device", "method", "checkpoint", "native", "picked"),
    [
        ("auto", "cpu", "lora", "bf16", True, "bf16"),  # a bf16 base stays bf16 under adapters
        ("auto", "cpu", "dora", "bf16", True, "bf16"),
        ("auto", "cpu", "lora", "bf16", False, "bf16-weights"),  # stored bf16, computed fp32
        ("auto", "cpu", "full", "bf16", True, "fp32"),  # full fine-tuning keeps fp32 masters
        ("auto", "cpu", "lora", "fp32", True, "bf16"),  # as on CUDA: native bf16 is faster
        ("auto", "cpu", "lora", None, True, "bf16"),
        ("auto", "cpu", "lora", "fp32", False, "fp32"),
        ("auto", "cpu", "full", "fp32", True, "fp32"),
        ("auto", "mps", "lora", "bf16", True, "fp32"),
        ("auto", "cuda", "lora", "fp32", False, "bf16"),
        ("fp32", "cpu", "lora", "bf16", True, "fp32"),
        ("bf16", "cpu", "lora", "fp32", False, "bf16"),
    ],
)
def test_training_precision(requested, device, method, checkpoint, native, picked) -> None:
    assert train_dtype(requested, device, method, checkpoint, native) == picked


@pytest.mark.parametrize(("value", "native"), [("0", False), ("1", True)])
def test_slmforge_cpu_bf16_overrides_the_detection(monkeypatch, value, native) -> None:
    monkeypatch.setenv("SLMFORGE_CPU_BF16", value)
    assert memory.cpu_computes_bf16() is native
    assert train_dtype("auto", "cpu", "lora", "fp32") == ("bf16" if native else "fp32")


def test_without_the_override_the_cpu_flags_decide(monkeypatch) -> None:
    import torch

    monkeypatch.delenv("SLMFORGE_CPU_BF16", raising=False)
    flags = torch.cpu.get_capabilities()
    assert memory.cpu_computes_bf16() is bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def test_a_run_that_fits_keeps_its_settings(said) -> None:
    assert check_run(SHAPE, RUN, 64 * GIB, strict=False) is False
    assert said[0].startswith("info: memory: needs ~") and "available on cpu: 64.0 GiB" in said[0]


def _between() -> int:
    """Memory in which the run fits only with gradient checkpointing."""
    asked = RUN.estimate(SHAPE).total
    checkpointed = RUN.estimate(SHAPE, gradient_checkpointing=True).total
    assert checkpointed < asked
    return (asked + checkpointed) // 2


def test_gradient_checkpointing_is_switched_on_when_only_it_fits(said) -> None:
    assert check_run(SHAPE, RUN, _between(), strict=False) is True
    assert len(said) == 1 and said[0].startswith("warn: memory: this run needs")
    assert "gradient checkpointing is on" in said[0]


def test_strict_memory_stops_instead_and_names_gradient_checkpointing() -> None:
    with pytest.raises(InputError, match="What would fit: --gradient-checkpointing; "):
        check_run(SHAPE, RUN, _between(), strict=True)


def test_a_run_that_cannot_fit_names_stage_need_availability_and_what_fits(monkeypatch) -> None:
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: True)
    with pytest.raises(InputError) as refused:
        check_run(SHAPE, RUN, 13 * GIB // 2, strict=False)
    message = str(refused.value)
    assert re.match(
        r"finetune: this run needs ~[\d.]+ GiB \(runtime [\d.]+ GiB, weights 1\.8 GiB, "
        r"optimizer [\d.]+ GiB, activations [\d.]+ GiB, logits [\d.]+ GiB\); [\d.]+ GiB with "
        r"gradient checkpointing; 6\.5 GiB is available on cpu\. What would fit: ",
        message,
    ), message
    assert "--precision bf16 (" in message
    assert re.search(r"--batch-size 3 \(raise --grad-accum to keep the rows per step\)", message)
    assert re.search(
        r"; or a smaller model\. On a CUDA GPU, --method qlora would need ~[\d.]+ GiB\.$", message
    )


def test_without_native_bf16_a_bf16_stored_base_is_what_fits(monkeypatch) -> None:
    """Where bf16 products would crawl, the suggestion keeps fp32 compute over a bf16 base."""
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: False)
    small = RunShape("lora", "fp32", "cpu", 1, 128, 16, True)
    needed = small.estimate(SHAPE, dtype="bf16-weights").total
    assert needed < small.estimate(SHAPE).total - SHAPE.params  # the weights' halving shows
    with pytest.raises(InputError) as refused:
        check_run(SHAPE, small, needed + MIB, strict=False)
    assert "--precision bf16-weights (" in str(refused.value)
    assert "--precision bf16 (" not in str(refused.value)


def test_nothing_fits_says_so() -> None:
    full = RunShape("full", "fp32", "cpu", 8, 1024, 16, False)
    with pytest.raises(InputError, match=r"Even 1 row of 16 tokens with gradient checkpointing "):
        check_run(SHAPE, full, 4 * GIB, strict=False)


def test_unknown_availability_is_not_a_refusal(said) -> None:
    assert check_run(SHAPE, RUN, None, strict=True) is False
    assert said[0].endswith("available on cpu: unknown")


# -- merge -----------------------------------------------------------------------------------------
PHI3_MINI = {
    "model_type": "phi3",
    "vocab_size": 32064,
    "hidden_size": 3072,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 8192,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}


def test_merge_holds_the_largest_tensor_not_the_model() -> None:
    # Qwen2.5-0.5B: the 151,936 x 896 embedding, copied as stored (bf16), outweighs the adapted
    # q/k/v/o projections; measured 545 MiB (docs/benchmarks.md)
    qwen = merge_estimate(SHAPE, "bf16")
    assert qwen.components["largest tensor"] == SHAPE.embedding_params * 2
    assert qwen.components["adapter"] == trainable_params(SHAPE, "lora", 16) * 4
    assert abs(qwen.total - 545 * MIB) < 0.1 * 545 * MIB


def test_an_adapted_weight_holds_its_fp32_copy_and_two_temporaries() -> None:
    # Phi-3-mini: the fused qkv_proj (3072 x 9216) with LoRA: bf16 stored + fp32 copy + two
    # fp32 temporaries = 14 bytes per weight; measured 712 MiB (docs/benchmarks.md)
    phi3 = shape_from_config(PHI3_MINI, None)
    qkv = 3072 * 9216
    assert merge_estimate(phi3, "bf16").components["largest tensor"] == qkv * 14
    # stored in fp32 there is no copy (12 bytes per weight), and the fp32 embedding is larger
    assert merge_estimate(phi3, "fp32").components["largest tensor"] == max(
        qkv * 12, phi3.embedding_params * 4
    )
    assert merge_estimate(phi3, "bf16", "dora").components["largest tensor"] == qkv * 18
    assert abs(merge_estimate(phi3, "bf16").total - 712 * MIB) < 0.1 * 712 * MIB
