"""Ollama Modelfiles for a GGUF export: FROM, ADAPTER, TEMPLATE, SYSTEM, PARAMETER stop.

Ollama renders prompts with Go templates, not the Jinja chat template in the GGUF, so each chat
format (models/chat.py) has its template here, written to render the same text as the Hugging
Face template for any conversation of system, user and assistant turns. Ollama passes every
message, system ones included, in `.Messages`, and the system text also in `.System`; it adds
the Modelfile's SYSTEM as the first message when a request has none, which is how a template's
built-in default system prompt (Qwen's ChatML) is kept. llama.cpp adds BOS itself when the GGUF
says so (`tokenizer.ggml.add_bos_token`), so a template only writes BOS text when it does not.

`Modelfile` is the base model (or the merged one); every adapter gets `Modelfile.NAME` with one
ADAPTER line, since Ollama applies all ADAPTER lines of a Modelfile together and slmforge's
adapters are alternatives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slmforge.models.chat import detect_format

# Chat format name -> Ollama template; {eos} is the tokenizer's end-of-sequence text
TEMPLATES = {
    "llama3": (
        "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "chatml": (
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    ),
    "phi3": "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
    # no system role: the system text opens the first user turn (index 1 after the system)
    "mistral": (
        '{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}[INST] '
        "{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}{{ .Content }} [/INST]"
        '{{ else if eq .Role "assistant" }} {{ .Content }}{eos}{{ end }}{{ end }}'
    ),
}


def ollama_template(tokenizer: Any, add_bos: bool) -> str | None:
    """The Go template for the tokenizer's chat format, or None for a template we do not
    know (Ollama then reads `tokenizer.chat_template` from the GGUF itself)."""
    fmt = detect_format(
        tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    )
    if fmt is None or fmt.name not in TEMPLATES:
        return None
    template = TEMPLATES[fmt.name].replace("{eos}", str(tokenizer.eos_token or ""))
    bos = str(tokenizer.bos_token or "")
    if bos and not add_bos and _renders_bos(tokenizer, bos):
        template = bos + template
    return template


def _renders_bos(tokenizer: Any, bos: str) -> bool:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    return text.startswith(bos)


def default_system(tokenizer: Any) -> str | None:
    """The system prompt the Hugging Face template adds when a conversation has none."""
    fmt = detect_format(
        tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    )
    if fmt is None or fmt.name != "chatml":
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return None
    return text[len(head) :].split("<|im_end|>", 1)[0]


def _quoted_block(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile block cannot hold """')
    return f'"""{text}"""'


def modelfile(
    model_file: str,
    adapter_file: str | None,
    template: str | None,
    system: str | None,
    stops: list[str],
    source: str,
) -> str:
    lines = [f"# {source} for Ollama, written by slmforge: ollama create NAME -f <this file>"]
    lines.append(f"FROM ./{model_file}")
    if adapter_file is not None:
        lines.append(f"ADAPTER ./{adapter_file}")
    if template is not None:
        lines.append(f"TEMPLATE {_quoted_block(template)}")
    else:
        lines.append("# no TEMPLATE: Ollama uses the chat template in the GGUF metadata")
    if system:
        lines.append(f"SYSTEM {_quoted_block(system)}")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfiles(
    folder: Path,
    model_file: str,
    adapter_files: dict[str, str],
    tokenizer: Any,
    add_bos: bool,
    stops: list[str],
    source: str,
) -> list[str]:
    """`Modelfile` for the base, `Modelfile.NAME` per adapter; returns the file names."""
    template = ollama_template(tokenizer, add_bos)
    system = default_system(tokenizer)
    written = {"Modelfile": modelfile(model_file, None, template, system, stops, source)}
    for name, adapter_file in adapter_files.items():
        text = modelfile(model_file, adapter_file, template, system, stops, f"{source} + {name}")
        written[f"Modelfile.{name}"] = text
    for name, text in written.items():
        (folder / name).write_text(text, encoding="utf-8")
    return list(written)
