"""Chat formats render the real model families' shapes; stop strings come from any tokenizer."""

from __future__ import annotations

import json

import pytest

from slmforge.errors import InputError
from slmforge.models.chat import (
    FORMAT_FOR_ARCH,
    FORMATS,
    detect_format,
    format_for_arch,
    get_format,
    render,
    stop_strings,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Where to?"},
]

EXPECTED = {
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n"
    "<|assistant|>\nHello!<|end|>\n<|user|>\nWhere to?<|end|>\n<|assistant|>\n",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhere to?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhere to?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] Be brief.\n\nHi there [/INST] Hello!</s>[INST] Where to? [/INST]",
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_render_with_generation_prompt(name: str) -> None:
    assert render(FORMATS[name], CHAT, add_generation_prompt=True) == EXPECTED[name]


def test_render_training_example_ends_the_turn() -> None:
    pair = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert render(FORMATS["phi3"], pair) == (
        "<|user|>\nQ<|end|>\n<|assistant|>\nA<|end|>\n<|endoftext|>"
    )
    assert render(FORMATS["chatml"], pair) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )
    assert render(FORMATS["mistral"], pair) == "<s>[INST] Q [/INST] A</s>"
    assert render(FORMATS["llama3"], pair).endswith("<|end_header_id|>\n\nA<|eot_id|>")


def test_mistral_rejects_non_alternating_roles() -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="alternate"):
        render(
            FORMATS["mistral"], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )


def test_format_for_every_arch() -> None:
    assert {a: format_for_arch(a).name for a in FORMAT_FOR_ARCH} == FORMAT_FOR_ARCH
    with pytest.raises(InputError, match="known: llama"):
        format_for_arch("gpt2")
    with pytest.raises(InputError, match="unknown chat format"):
        get_format("vicuna")


def test_detect_format_on_templates_worded_differently() -> None:
    qwen25 = (
        "{%- if tools %}...{%- endif %}{{- '<|im_start|>' + message.role + '\\n' }}"
        "{{- '<|im_end|>\\n' }}"
    )
    llama32 = "{{- '<|start_header_id|>' + message['role'] }}{{- '<|eot_id|>' }}"
    assert detect_format(qwen25).name == "chatml"
    assert detect_format(llama32).name == "llama3"
    assert detect_format("{{ '<start_of_turn>user' }}") is None
    assert detect_format(None) is None


@pytest.fixture(scope="module")
def trained_tokenizers() -> dict[str, object]:
    from slmforge.models.tiny import train_tokenizer

    docs = ["The quick brown fox jumps over the lazy dog."] * 20
    return {name: train_tokenizer(docs, fmt, 300) for name, fmt in FORMATS.items()}


def test_stop_strings_from_tokenizer_objects(trained_tokenizers: dict[str, object]) -> None:
    assert stop_strings(trained_tokenizers["phi3"]) == ["<|end|>", "<|endoftext|>"]
    assert stop_strings(trained_tokenizers["chatml"]) == ["<|im_end|>", "<|endoftext|>"]
    assert stop_strings(trained_tokenizers["llama3"]) == ["<|eot_id|>", "<|end_of_text|>"]
    assert stop_strings(trained_tokenizers["mistral"]) == ["</s>"]


def test_stop_strings_read_generation_config(tmp_path) -> None:
    # A model whose template we do not know still stops at its generation_config eos ids.
    from slmforge.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(["Some text to learn from."] * 20, FORMATS["chatml"], 300)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(tmp_path)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end]}))
    assert stop_strings(tmp_path) == ["<|endoftext|>", "<|im_end|>"]
