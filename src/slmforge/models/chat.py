"""Chat formats (registry by name) and the stop strings of any Hugging Face tokenizer.

Each format carries a Jinja chat template in the shape of the real model family's template, so a
tiny model built with it behaves like a downloaded one: `tokenizer.apply_chat_template` renders
the same markers, and the stop tokens that end an assistant turn are known. `stop_strings` works
for any tokenizer (tiny or from the hub): the format's stop tokens when its template is one we
know, plus the eos token, plus the eos ids of `generation_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.errors import InputError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str  # Jinja, as in tokenizer_config.json "chat_template"
    stop: list[str]  # tokens that end an assistant turn
    special_tokens: list[str]  # every special token the format needs in the vocabulary
    bos: str | None
    eos: str
    # Text that identifies a template of this family, even one worded differently.
    markers: list[str] = field(default_factory=list)


# Phi-3 / Phi-3.5 instruct: role tags, each turn closed by <|end|>.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Qwen2 instruct (ChatML), including its default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 instruct: headers, each turn closed by <|eot_id|>, bos once at the start.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Mistral instruct: no system role, so the system text is prepended to the first user turn.
# The generation prompt is empty: a prompt already ends with "[/INST]".
MISTRAL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system_message is defined %}"
    "{{ '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

FORMATS: dict[str, ChatFormat] = {
    "phi3": ChatFormat(
        name="phi3",
        template=PHI3_TEMPLATE,
        stop=["<|end|>"],
        special_tokens=["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        bos=None,
        eos="<|endoftext|>",
        markers=["<|assistant|>", "<|end|>"],
    ),
    "chatml": ChatFormat(
        name="chatml",
        template=CHATML_TEMPLATE,
        stop=["<|im_end|>"],
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None,
        eos="<|endoftext|>",
        markers=["<|im_start|>", "<|im_end|>"],
    ),
    "llama3": ChatFormat(
        name="llama3",
        template=LLAMA3_TEMPLATE,
        stop=["<|eot_id|>"],
        special_tokens=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        markers=["<|start_header_id|>", "<|eot_id|>"],
    ),
    "mistral": ChatFormat(
        name="mistral",
        template=MISTRAL_TEMPLATE,
        stop=["</s>"],
        special_tokens=["<unk>", "<s>", "</s>"],
        bos="<s>",
        eos="</s>",
        markers=["[INST]", "[/INST]"],
    ),
}

FORMAT_FOR_ARCH = {"llama": "llama3", "qwen2": "chatml", "phi3": "phi3", "mistral": "mistral"}


def get_format(name: str) -> ChatFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown chat format {name!r} (known: {', '.join(FORMATS)})") from None


def format_for_arch(arch: str) -> ChatFormat:
    if arch not in FORMAT_FOR_ARCH:
        known = ", ".join(FORMAT_FOR_ARCH)
        raise InputError(f"no chat format for architecture {arch!r} (known: {known})")
    return FORMATS[FORMAT_FOR_ARCH[arch]]


def render(
    fmt: ChatFormat, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> str:
    """Render messages with the format's template, the way `apply_chat_template` does.

    Used before a tokenizer exists (the tiny-model corpus); transformers' own renderer runs the
    same template with the same Jinja settings.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=fmt.template,
        add_generation_prompt=add_generation_prompt,
        bos_token=fmt.bos or "",
        eos_token=fmt.eos,
    )
    return rendered[0]


def detect_format(template: str | None) -> ChatFormat | None:
    """The format whose markers all appear in `template`, or None."""
    if not template:
        return None
    for fmt in FORMATS.values():
        if all(marker in template for marker in fmt.markers):
            return fmt
    return None


def _template_text(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one decides
        template = template.get("default") or next(iter(template.values()), None)
    return template


def _generation_config_path(name_or_path: str) -> Path | None:
    """generation_config.json of a local folder, or of a hub model in the local HF cache."""
    if not name_or_path:
        return None
    if Path(name_or_path).is_dir():
        return Path(name_or_path) / "generation_config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "generation_config.json")
    except (ImportError, ValueError):  # no hub client, or not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _generation_eos_ids(path: Path | None) -> list[int]:
    if path is None or not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (ValueError, AttributeError):
        return []
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else [int(i) for i in eos]


def stop_strings(tokenizer_or_folder: Any) -> list[str]:
    """The strings that end an assistant turn for a tokenizer (object, folder or hub id).

    The format's stop tokens when the chat template is one we know, then the eos token, then the
    tokens of `generation_config.json`'s eos ids (real instruct models list their end-of-turn
    tokens there), in that order without repeats.
    """
    if isinstance(tokenizer_or_folder, str | Path):
        from slmforge.models.load import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_or_folder)
    else:
        tokenizer = tokenizer_or_folder
    stops: list[str] = []
    fmt = detect_format(_template_text(tokenizer))
    if fmt is not None:
        vocab = tokenizer.get_vocab()
        stops += [s for s in fmt.stop if s in vocab]
    if tokenizer.eos_token:
        stops.append(str(tokenizer.eos_token))
    config_path = _generation_config_path(str(getattr(tokenizer, "name_or_path", "") or ""))
    for token_id in _generation_eos_ids(config_path):
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token:
            stops.append(token)
    return list(dict.fromkeys(stops))
