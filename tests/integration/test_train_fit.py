"""Fine-tuning fits itself to memory: bf16 bases under adapters, gradient checkpointing switched
on when only it fits, and a clear refusal before any weights load when nothing does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slmforge import progress
from slmforge.artifacts import read_manifest
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.sample import write_sample
from slmforge.train import memory, sft

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def travel(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("data") / "travel.jsonl")


@pytest.fixture(scope="module")
def bf16_llama(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama saved in bf16 (config.json records dtype bfloat16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model("llama")
    out = tmp_path_factory.mktemp("bf16") / "llama"
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


@pytest.fixture(scope="module")
def deep_llama(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama's width with 8 layers (random weights), deep enough for gradient
    checkpointing to save memory (with 2 layers, recomputing one costs what it saves)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = tiny_model("llama")
    config = AutoConfig.from_pretrained(base)
    config.num_hidden_layers = 8
    out = tmp_path_factory.mktemp("deep") / "llama"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def _config(model: Path, data: Path, out: Path, **overrides) -> FinetuneConfig:
    options = dict(
        model=str(model),
        data=data,
        out=out,
        max_steps=12,
        lr=5e-3,
        batch_size=8,
        log_every=4,
        samples=0,
        seed=3,
    )
    return FinetuneConfig(**(options | overrides))


def _trainable_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad}


def test_a_bf16_checkpoint_trains_adapters_over_a_bf16_base_where_the_cpu_computes_bf16(
    bf16_llama, travel, tmp_path, monkeypatch
):
    seen = {}
    real_fit = sft.fit

    def spy(plan, log):
        seen["base"] = {p.dtype for p in plan.model.parameters() if not p.requires_grad}
        seen["trainable"] = _trainable_dtypes(plan.model)
        seen["autocast"] = plan.autocast_dtype
        return real_fit(plan, log)

    monkeypatch.setattr(sft, "fit", spy)
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: True)
    out = sft.finetune(
        _config(bf16_llama, travel, tmp_path / "adapter", eval_data=travel, samples=1)
    )
    assert seen == {
        "base": {torch.bfloat16},
        "trainable": {torch.float32},
        "autocast": torch.bfloat16,
    }
    manifest = read_manifest(out)
    assert manifest.details["precision"] == "bf16"
    assert manifest.metrics["train_loss_last"] < manifest.metrics["train_loss_first"]
    assert manifest.metrics["eval_loss_final"] < manifest.metrics["eval_loss_initial"]
    assert len(manifest.details["samples"]) == 1  # generation works over the bf16 base

    fp32 = sft.finetune(_config(bf16_llama, travel, tmp_path / "fp32", precision="fp32"))
    assert seen["base"] == {torch.float32} and seen["autocast"] is None
    assert read_manifest(fp32).details["precision"] == "fp32"

    # a CPU without native bf16 would crawl through bf16 products: auto keeps the base in bf16
    # there but computes in fp32, and trains the same adapter as an fp32 base to bf16 rounding
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: False)
    kept = sft.finetune(
        _config(
            bf16_llama, travel, tmp_path / "no-native", max_steps=4, eval_data=travel, samples=1
        )
    )
    # linears and embeddings stay bf16 (norms become fp32); compute is fp32
    assert seen == {
        "base": {torch.bfloat16, torch.float32},
        "trainable": {torch.float32},
        "autocast": None,
    }
    manifest = read_manifest(kept)
    assert manifest.details["precision"] == "bf16-weights"
    assert manifest.metrics["train_loss_last"] < manifest.metrics["train_loss_first"]
    assert len(manifest.details["samples"]) == 1
    fp32_short = sft.finetune(
        _config(bf16_llama, travel, tmp_path / "fp32-short", precision="fp32", max_steps=4)
    )
    assert manifest.metrics["train_loss_last"] == pytest.approx(
        read_manifest(fp32_short).metrics["train_loss_last"], rel=1e-4
    )


def test_an_fp32_checkpoint_trains_over_a_bf16_base_only_where_the_cpu_computes_bf16(
    tiny_model, travel, tmp_path, monkeypatch
):
    seen = {}
    real_fit = sft.fit

    def spy(plan, log):
        seen["base"] = {p.dtype for p in plan.model.parameters() if not p.requires_grad}
        seen["autocast"] = plan.autocast_dtype
        return real_fit(plan, log)

    monkeypatch.setattr(sft, "fit", spy)
    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: False)
    out = sft.finetune(_config(tiny_model("llama"), travel, tmp_path / "adapter", max_steps=4))
    assert read_manifest(out).details["precision"] == "fp32"
    assert seen == {"base": {torch.float32}, "autocast": None}

    monkeypatch.setattr(memory, "cpu_computes_bf16", lambda: True)
    native = sft.finetune(_config(tiny_model("llama"), travel, tmp_path / "native", max_steps=8))
    assert seen == {"base": {torch.bfloat16}, "autocast": torch.bfloat16}
    manifest = read_manifest(native)
    assert manifest.details["precision"] == "bf16"
    assert manifest.metrics["train_loss_last"] < manifest.metrics["train_loss_first"]
    assert _trainable_dtypes_of(native) == {torch.float32}  # the saved adapter stays fp32


def _trainable_dtypes_of(adapter: Path) -> set[torch.dtype]:
    from safetensors.torch import load_file

    return {t.dtype for t in load_file(str(adapter / "adapter_model.safetensors")).values()}


def test_gradient_checkpointing_is_switched_on_when_only_it_fits(
    deep_llama, travel, tmp_path, monkeypatch
):
    """Available memory is squeezed between the run's estimates with and without it."""
    real = memory.check_run

    def squeezed(shape, run, available, strict):
        asked = run.estimate(shape).total
        checkpointed = run.estimate(shape, gradient_checkpointing=True).total
        return real(shape, run, (asked + checkpointed) // 2, strict)

    warnings: list[str] = []
    monkeypatch.setattr(sft, "check_run", squeezed)
    monkeypatch.setattr(progress, "warn", warnings.append)
    seen = {}
    real_fit = sft.fit

    def spy(plan, log):
        model = plan.model.get_base_model()
        seen["checkpointing"] = model.is_activation_checkpointing
        return real_fit(plan, log)

    monkeypatch.setattr(sft, "fit", spy)
    out = sft.finetune(_config(deep_llama, travel, tmp_path / "adapter", max_steps=4))
    assert seen == {"checkpointing": True}
    assert [w for w in warnings if w.startswith("memory:")] and "gradient checkpointing is on" in (
        warnings[0]
    )
    manifest = read_manifest(out)
    assert manifest.details["gradient_checkpointing"] is True
    assert manifest.config["gradient_checkpointing"] is False  # the config stays as asked


def test_a_run_that_cannot_fit_is_refused_before_loading_weights(
    tiny_model, travel, tmp_path, monkeypatch, capsys
):
    from slmforge.cli.main import main
    from slmforge.models import load

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(sft, "available_bytes", lambda device: 300 * memory.MIB)
    monkeypatch.setattr(load, "load_causal_lm", must_not_load)
    out = tmp_path / "adapter"
    argv = ["finetune", "--model", str(tiny_model("llama")), "--data", str(travel)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--max-steps", "2", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: finetune: this run needs ~0.5 GiB (runtime 0.4 GiB" in err
    assert "0.3 GiB is available on cpu" in err
    assert "Even 1 row of 16 tokens with gradient checkpointing needs 0.4 GiB: use a smaller" in err
    assert "On a CUDA GPU, --method qlora would need ~0.5 GiB." in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind
