"""`slmforge optimize` on the tiny models: parity with PyTorch, int4, switchable adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.config.finetune import FinetuneConfig
from slmforge.config.optimize import OptimizeConfig
from slmforge.data.sample import write_sample
from slmforge.errors import InputError
from slmforge.optimize.run import optimize
from slmforge.runtime.engine import GenParams, complete

pytestmark = pytest.mark.integration

PROMPTS = [
    [{"role": "user", "content": "What should I pack for Lisbon?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain a list."}],
]
GREEDY = GenParams(max_tokens=24)
FAST_VERIFY = {"verify_prompts": 3, "verify_tokens": 12}


def _optimize(model: Path, out: Path, **options) -> Path:
    return optimize(OptimizeConfig(model=str(model), out=out, **(FAST_VERIFY | options)))


def _greedy_texts(engine, adapter: str | None = None) -> list[str]:
    return [complete(engine, messages, GREEDY, adapter).text for messages in PROMPTS]


@pytest.fixture(scope="module")
def peft_adapter_strong(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter with random (not zero) B, so it changes the output clearly."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmforge.models.load import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(tiny_model("llama"))
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    folder = tmp_path_factory.mktemp("peft") / "strong"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters of the tiny llama (different seeds and learning rates)."""
    from slmforge.train.sft import finetune

    root = tmp_path_factory.mktemp("adapters")
    data = write_sample(root / "travel.jsonl")
    adapters = {}
    for name, seed, lr in (("travel", 1, 1e-2), ("terse", 2, 2e-2)):
        cfg = FinetuneConfig(
            model=str(tiny_model("llama")),
            data=data,
            out=root / name,
            max_steps=10,
            lr=lr,
            batch_size=4,
            samples=0,
            seed=seed,
            target_modules=["q_proj", "v_proj", "down_proj"],
        )
        adapters[name] = finetune(cfg)
    return adapters


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "mistral"])
def test_fp32_matches_pytorch(tiny_model, tmp_path, arch):
    from slmforge.runtime.onnx_engine import OnnxEngine
    from slmforge.runtime.torch_engine import TorchEngine

    base = tiny_model(arch)
    out = _optimize(base, tmp_path / "onnx", precision="fp32", max_length=256)
    manifest = read_manifest(out)
    parity = manifest.metrics["parity"]["base"]
    assert parity["max_logit_diff"] < 1e-3 and parity["greedy_match"] == 1.0, parity
    assert parity["agreement"] == 1.0
    assert manifest.kind == "onnx_model" and manifest.chat_template and manifest.stop
    assert manifest.details["precision"] == "fp32" and manifest.details["architecture"] == arch
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == 256
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == manifest.chat_template
    onnx_engine = OnnxEngine(out)
    torch_engine = TorchEngine(base)
    assert _greedy_texts(onnx_engine) == _greedy_texts(torch_engine)
    # Next-token logits directly, on one rendered prompt.
    ids = onnx_engine.prompt_ids(PROMPTS[0])
    import torch

    with torch.inference_mode():
        ref = torch_engine.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert abs(onnx_engine.logits(ids) - ref).max() < 1e-3


def test_int4_reports_agreement_and_size(tiny_model, tmp_path):
    out = _optimize(tiny_model("qwen2"), tmp_path / "int4", precision="int4", min_agreement=0.0)
    manifest = read_manifest(out)
    metrics = manifest.metrics
    assert metrics["size_after_bytes"] < 0.7 * metrics["size_before_bytes"], metrics
    assert 0 < metrics["size_ratio"] < 0.7
    parity = metrics["parity"]["base"]
    assert 0.0 <= parity["agreement"] <= 1.0 and parity["max_logit_diff"] > 0
    assert manifest.config["int4_block_size"] == 32 and manifest.details["precision"] == "int4"


def test_switchable_adapters_match_merged_pytorch(tiny_model, two_adapters, tmp_path):
    from slmforge.runtime.onnx_engine import OnnxEngine
    from slmforge.runtime.torch_engine import TorchEngine
    from slmforge.train.merge import merge_adapter

    base = tiny_model("llama")
    specs = [f"{name}={path}" for name, path in two_adapters.items()]
    out = _optimize(base, tmp_path / "onnx", precision="fp32", adapter=specs)
    manifest = read_manifest(out)
    assert set(manifest.metrics["parity"]) == {"base", "travel", "terse"}
    assert all(p["greedy_match"] == 1.0 for p in manifest.metrics["parity"].values())
    assert manifest.details["adapters"]["travel"]["target_modules"] == [
        "down_proj",
        "q_proj",
        "v_proj",
    ]
    assert {p.name for p in out.glob("*.onnx_adapter")} == {
        "travel.onnx_adapter",
        "terse.onnx_adapter",
    }
    engine = OnnxEngine(out)
    assert engine.adapters() == ["terse", "travel"]
    base_texts = _greedy_texts(TorchEngine(base))
    assert _greedy_texts(engine) == base_texts  # no adapter: the plain base model
    outputs = {}
    for name, path in two_adapters.items():
        merged = merge_adapter(path, tmp_path / f"merged-{name}")
        outputs[name] = _greedy_texts(engine, name)
        assert outputs[name] == _greedy_texts(TorchEngine(merged)), name
    assert outputs["travel"] != base_texts or outputs["terse"] != base_texts
    # Requests switch adapters freely on one engine.
    assert _greedy_texts(engine, "travel") == outputs["travel"]
    assert _greedy_texts(engine) == base_texts


def test_int4_base_with_adapters_reports_agreement(tiny_model, two_adapters, tmp_path):
    specs = [str(path) for path in two_adapters.values()]
    out = _optimize(tiny_model("llama"), tmp_path / "onnx", precision="int4", adapter=specs)
    parity = read_manifest(out).metrics["parity"]
    assert set(parity) == {"base", "travel", "terse"}
    for figures in parity.values():
        assert 0.0 <= figures["agreement"] <= 1.0 and figures["positions"] > 0


def _verify_again(out: Path, base: Path, adapters: dict[str, Path], precision: str) -> None:
    from slmforge.config.optimize import DEFAULT_MAX_KL, DEFAULT_MIN_AGREEMENT
    from slmforge.optimize import verify

    prompts = verify.verification_prompts(None, 4)
    for label, parity in verify.verify_build(out, base, adapters, False, prompts, 12).items():
        verify.check(
            parity, precision, DEFAULT_MAX_KL[precision], DEFAULT_MIN_AGREEMENT[precision], label
        )


def test_broken_builds_fail_verification(tiny_model, peft_adapter_strong, tmp_path):
    """The int4 bars hold for a sound build and catch a wrong adapter scale and a transposed
    weight, though int4 already moves the logits (the KL bar, not exact logits, decides)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from slmforge.errors import RunError
    from slmforge.optimize import adapters as lora

    base, adapters = tiny_model("llama"), {"rnd": peft_adapter_strong}
    out = _optimize(
        base, tmp_path / "int4", precision="int4", adapter=[f"rnd={peft_adapter_strong}"]
    )
    _verify_again(out, base, adapters, "int4")  # the sound build passes again

    shapes = lora.lora_initializer_shapes(out / "model.onnx")
    tensors = lora.onnx_tensors(lora.read_adapter("rnd", peft_adapter_strong), shapes)
    doubled = {k: (v * 2 if "lora_B" in k else v) for k, v in tensors.items()}
    lora.write_adapter(doubled, out / "rnd.onnx_adapter")
    with pytest.raises(RunError, match="verification failed for rnd"):
        _verify_again(out, base, adapters, "int4")
    lora.write_adapter(tensors, out / "rnd.onnx_adapter")

    model = onnx.load(out / "model.onnx")
    # The embedding's hidden dimension in the wrong order, as a mis-transposed export gives.
    embed = next(t for t in model.graph.initializer if t.name.endswith("embed_tokens.weight"))
    weight = numpy_helper.to_array(embed)
    embed.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight[:, ::-1]), embed.name))
    onnx.save(model, out / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    with pytest.raises(RunError, match="verification failed for base"):
        _verify_again(out, base, adapters, "int4")


def test_merge_adapter_bakes_one_in(tiny_model, two_adapters, tmp_path):
    path = two_adapters["travel"]
    out = _optimize(
        tiny_model("llama"),
        tmp_path / "onnx",
        precision="fp32",
        adapter=[str(path)],
        merge_adapter=True,
    )
    manifest = read_manifest(out)
    assert manifest.details["merged_adapter"] == "travel" and not list(out.glob("*.onnx_adapter"))
    assert manifest.metrics["parity"]["base"]["greedy_match"] == 1.0


def test_adapter_of_another_base_is_refused_before_any_work(tiny_model, two_adapters, tmp_path):
    with pytest.raises(InputError, match="adapter travel was trained on a different base"):
        _optimize(tiny_model("mistral"), tmp_path / "onnx", adapter=[str(two_adapters["travel"])])
    assert not list(tmp_path.iterdir())


def test_adapters_with_different_targets_are_refused(tiny_model, two_adapters, tmp_path):
    from peft import LoraConfig, get_peft_model

    from slmforge.models.load import load_causal_lm

    base = tiny_model("llama")
    model = load_causal_lm(base)
    other = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj"]))
    other.save_pretrained(tmp_path / "other")
    specs = [str(two_adapters["travel"]), str(tmp_path / "other")]
    with pytest.raises(InputError, match="target different modules"):
        _optimize(base, tmp_path / "onnx", adapter=specs)
    assert not (tmp_path / "onnx").exists()
