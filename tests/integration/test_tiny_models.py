"""Tiny models are normal Hugging Face folders of real architectures, pretrained a little."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.errors import InputError, ModelError, OutputExistsError
from slmforge.models.load import is_model_folder, load_causal_lm, load_tokenizer, model_info

pytestmark = pytest.mark.integration

ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "mistral": "MistralForCausalLM",
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
RENDERED = {
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
    "qwen2": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]",
}
STOPS = {
    "phi3": ["<|end|>", "<|endoftext|>"],
    "qwen2": ["<|im_end|>", "<|endoftext|>"],
    "llama": ["<|eot_id|>", "<|end_of_text|>"],
    "mistral": ["</s>"],
}


@pytest.mark.parametrize("arch", list(ARCH_CLASS))
def test_folder_is_a_normal_hf_model(tiny_model, arch: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model(arch)
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "slmforge.json",
    ):
        assert (folder / name).is_file(), name
    assert "chat_template" in json.loads((folder / "tokenizer_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == ARCH_CLASS[arch]
    assert model.config.tie_word_embeddings is False
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == RENDERED[arch]


@pytest.mark.parametrize("arch", list(ARCH_CLASS))
def test_pretraining_lowered_loss_and_manifest(tiny_model, arch: str) -> None:
    manifest = read_manifest(tiny_model(arch))
    assert manifest is not None and manifest.kind == "model"
    start, end = manifest.metrics["pretrain_loss_start"], manifest.metrics["pretrain_loss_end"]
    assert start > 7.0 and end < start - 2.0, (start, end)
    assert manifest.stop == STOPS[arch]
    assert manifest.config["arch"] == arch and manifest.chat_template


@pytest.mark.parametrize("arch", list(ARCH_CLASS))
def test_model_info_without_loading(tiny_model, arch: str) -> None:
    folder = tiny_model(arch)
    info = model_info(folder)
    model = load_causal_lm(folder)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["architecture"] == ARCH_CLASS[arch]
    assert info["dtype"] == "float32" and info["context_length"] == 2048
    assert info["vocab_size"] == len(load_tokenizer(folder))
    assert info["chat_template"] is True and info["stop"] == STOPS[arch]


def test_pickle_weights_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_llama / name).read_bytes())
    model = load_causal_lm(tiny_llama)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickle weights \(pytorch_model.bin\).*allow-pickle"):
        load_causal_lm(folder)
    assert is_model_folder(folder)
    loaded = load_causal_lm(folder, allow_pickle=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_not_a_model_folder_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"missing weights \(\*.safetensors\), a tokenizer"):
        load_causal_lm(tmp_path)
    assert not is_model_folder(tmp_path)
    with pytest.raises(ModelError, match="no such model folder"):
        load_tokenizer(tmp_path / "nope")


def test_dtype_option(tiny_llama: Path) -> None:
    import torch

    assert load_causal_lm(tiny_llama, dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(InputError, match="unknown dtype"):
        load_causal_lm(tiny_llama, dtype="int3")


def test_build_is_deterministic_and_respects_force(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from slmforge.models.tiny import build

    first = build("qwen2", tmp_path / "a", pretrain_steps=3, seed=1)
    second = build("qwen2", tmp_path / "b", pretrain_steps=3, seed=1)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    with pytest.raises(OutputExistsError):
        build("qwen2", first, pretrain_steps=0)


def test_corpus_is_the_same_in_any_process() -> None:
    # The CLI runs under typer (which replaces sys.excepthook) and tests under pytest; both
    # must gather the same text, or the same seed would build different models.
    import hashlib
    import subprocess
    import sys

    from slmforge.models.chat import format_for_arch
    from slmforge.models.corpus import build_corpus

    code = (
        "import hashlib, typer\n"
        "from slmforge.models.chat import format_for_arch\n"
        "from slmforge.models.corpus import build_corpus\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def main():\n"
        "    text = '\\x00'.join(build_corpus(format_for_arch('qwen2')))\n"
        "    print(hashlib.sha256(text.encode()).hexdigest())\n"
        "app()\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    here = "\x00".join(build_corpus(format_for_arch("qwen2")))
    assert other.stdout.strip() == hashlib.sha256(here.encode()).hexdigest(), other.stderr
