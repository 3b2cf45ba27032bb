"""GGUF export on the tiny models: parity with PyTorch per precision and family, LoRA adapter
files against the merged PyTorch model, Ollama templates against the Hugging Face chat
templates, and bad input."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gguf")

from slmforge.artifacts import read_manifest
from slmforge.config import validate
from slmforge.config.gguf import GGUF_PRECISIONS, GgufConfig
from slmforge.errors import ConfigError, InputError, OutputExistsError, RunError
from slmforge.optimize.gguf import export_gguf
from slmforge.optimize.gguf.families import FAMILIES
from slmforge.optimize.gguf.modelfile import ollama_template
from slmforge.optimize.gguf.readback import GgufTensors, adapter_deltas
from slmforge.optimize.gguf.run import tensor_types

pytestmark = pytest.mark.integration

ARCHES = ["llama", "qwen2", "phi3", "mistral"]
FAST = {"verify_prompts": 3, "verify_tokens": 8}


def _export(model: Path, out: Path, **options: Any) -> Path:
    return export_gguf(GgufConfig(model=str(model), out=out, **(FAST | options)))


def _parity(folder: Path) -> dict[str, dict[str, Any]]:
    manifest = read_manifest(folder)
    assert manifest is not None
    return manifest.metrics["parity"]


@pytest.mark.parametrize("arch", ARCHES)
def test_f16_matches_pytorch_logits(tiny_model, tmp_path, arch):
    out = _export(tiny_model(arch), tmp_path / "gguf", precision="f16")
    names = sorted(p.name for p in out.iterdir())
    # the weights, Ollama's Modelfile, the manifest, and the Hugging Face tokenizer (the chat
    # template with it) that slmforge's own llama.cpp engine renders chats with
    assert {"Modelfile", "model-f16.gguf", "slmforge.json", "tokenizer_config.json"} <= set(names)
    assert not [n for n in names if n.endswith((".safetensors", ".onnx", ".tmp"))]
    assert _parity(out)["base"]["max_logit_diff"] < 1e-2
    gguf = GgufTensors(out / "model-f16.gguf")
    assert gguf.field("general.architecture") == FAMILIES[arch].arch
    assert gguf.field("tokenizer.ggml.model") == "gpt2"
    assert "{%" in gguf.field("tokenizer.chat_template")
    types = tensor_types(out / "model-f16.gguf")
    assert types["blk.0.attn_norm.weight"] == "F32" and types["token_embd.weight"] == "F16"
    manifest = read_manifest(out)
    assert manifest.kind == "gguf_model" and manifest.stop and manifest.chat_template


@pytest.mark.parametrize("precision", ["q8_0", "q4_0"])
@pytest.mark.parametrize("arch", ARCHES)
def test_quantized_pass_the_kl_bars(tiny_model, tmp_path, arch, precision):
    out = _export(tiny_model(arch), tmp_path / "gguf", precision=precision)
    parity = _parity(out)["base"]
    assert parity["kl"] <= GGUF_PRECISIONS[precision].max_kl
    types = set(tensor_types(out / f"model-{precision}.gguf").values())
    assert precision.upper() in types


def _strong_adapter(model: Path, out: Path, targets: list[str], seed: int) -> Path:
    """A LoRA adapter with random A and B (not PEFT's zero B), so it moves the output."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmforge.models.load import load_causal_lm

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(load_causal_lm(model), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.3)  # large enough to matter, small enough to stay in the bars
    peft_model.save_pretrained(out)
    return out


ADAPTER_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "down_proj"],  # k: the permuted rows of B
    "phi3": ["qkv_proj", "gate_up_proj", "o_proj"],  # the fused projections
}


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_adapter_file_over_base_matches_merged(tiny_model, tmp_path, arch):
    from peft import PeftModel

    from slmforge.models.load import load_causal_lm

    model = tiny_model(arch)
    adapter = _strong_adapter(model, tmp_path / "travel", ADAPTER_TARGETS[arch], seed=1)
    out = _export(model, tmp_path / "gguf", precision="q8_0", adapter=[f"travel={adapter}"])
    assert {"travel.gguf", "Modelfile.travel"} <= {p.name for p in out.iterdir()}
    parity = _parity(out)
    assert parity["travel"]["kl"] <= GGUF_PRECISIONS["q8_0"].max_kl

    file = GgufTensors(out / "travel.gguf")
    assert file.field("general.type") == "adapter" and file.field("adapter.type") == "lora"
    assert file.field("adapter.lora.alpha") == 8.0
    config = json.loads((model / "config.json").read_text())
    peft = PeftModel.from_pretrained(load_causal_lm(model, dtype="float32"), str(adapter))
    expected = {}
    for name, module in peft.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight"):
            expected[f"{name}.weight"] = module.get_delta_weight("default").detach().numpy()
    deltas = adapter_deltas(out / "travel.gguf", FAMILIES[arch], config, list(expected))
    assert deltas.keys() == expected.keys()
    for name, delta in deltas.items():
        assert np.abs(delta - expected[name]).max() < 1e-5, name


def test_merged_adapter_matches_peft(tiny_model, tmp_path):
    model = tiny_model("llama")
    adapter = _strong_adapter(model, tmp_path / "terse", ["q_proj", "v_proj"], seed=2)
    out = _export(
        model, tmp_path / "gguf", precision="f16", adapter=[f"terse={adapter}"], merge_adapter=True
    )
    assert not (out / "terse.gguf").exists()
    assert _parity(out)["base"]["max_logit_diff"] < 1e-2
    assert read_manifest(out).details["merged_adapter"] == "terse"


def test_tied_embeddings_have_no_output_tensor(tiny_model, tmp_path):
    """A Qwen2 with tied embeddings (random weights): llama.cpp reads the head from
    token_embd, so the file has no output.weight, and the round trip still matches."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = tiny_model("qwen2")
    folder = tmp_path / "tied"
    config = AutoConfig.from_pretrained(source)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    out = _export(folder, tmp_path / "gguf", precision="f16")
    types = tensor_types(out / "model-f16.gguf")
    assert "output.weight" not in types and "blk.0.attn_q.bias" in types
    assert _parity(out)["base"]["max_logit_diff"] < 1e-2


# A renderer for the part of Go's text/template the Ollama templates use: if / else if / else,
# range (with `$i, $_ :=`), .Field, $.Field, $var, string and int literals, eq / ne / and /
# or / not, and {{- -}} trimming. Ollama is not installed here.
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _parse(template: str) -> list[Any]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            text = text.lstrip()
            tokens.pop()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        if match.group(3):
            tokens.append(("trim", ""))
        pos = match.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim":
        tail = tail.lstrip()
        tokens.pop()
    tokens.append(("text", tail))
    body, rest = _block(tokens)
    assert not rest, rest
    return body


def _block(tokens: list[tuple[str, str]]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Nodes up to an else/end action (left in the returned rest)."""
    nodes: list[Any] = []
    while tokens:
        kind, value = tokens[0]
        if kind == "action" and (value == "end" or value.startswith("else")):
            return nodes, tokens
        tokens = tokens[1:]
        if kind == "text":
            nodes.append(("text", value))
        elif value.startswith("if "):
            branches = []
            condition: str | None = value[3:]
            while True:
                body, tokens = _block(tokens)
                branches.append((condition, body))
                action, tokens = tokens[0][1], tokens[1:]
                if action == "end":
                    break
                condition = action[8:] if action.startswith("else if ") else None
            nodes.append(("if", branches))
        elif value.startswith("range "):
            body, tokens = _block(tokens)
            assert tokens[0][1] == "end"
            tokens = tokens[1:]
            nodes.append(("range", value[6:], body))
        else:
            nodes.append(("out", value))
    return nodes, tokens


def _words(expr: str) -> list[str]:
    return re.findall(r'"[^"]*"|\([^()]*\)|[^\s()]+', expr)


def _eval(expr: str, dot: Any, scope: dict[str, Any]) -> Any:
    words = _words(expr.strip())
    functions = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "and": lambda a, b: b if a else a,
        "or": lambda a, b: a if a else b,
        "not": lambda a: not a,
    }
    if words[0] in functions:
        return functions[words[0]](*(_atom(w, dot, scope) for w in words[1:]))
    assert len(words) == 1, expr
    return _atom(words[0], dot, scope)


def _atom(word: str, dot: Any, scope: dict[str, Any]) -> Any:
    if word.startswith("("):
        return _eval(word[1:-1], dot, scope)
    if word.startswith('"'):
        return word[1:-1]
    if word.isdigit():
        return int(word)
    if word.startswith("$."):
        return scope["$"][word[2:]]
    if word.startswith("$"):
        return scope[word]
    if word.startswith("."):
        return dot[word[1:]]
    raise AssertionError(f"unsupported word {word!r}")


def _run(nodes: list[Any], dot: Any, scope: dict[str, Any]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_eval(node[1], dot, scope)))
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _eval(condition, dot, scope):
                    out.append(_run(body, dot, scope))
                    break
        else:
            names, _, source = node[1].rpartition(":=")
            variables = [n.strip() for n in names.split(",")] if names else []
            for index, item in enumerate(_eval(source, dot, scope)):
                inner = dict(scope)
                if len(variables) == 2:
                    inner[variables[0]], inner[variables[1]] = index, item
                out.append(_run(node[2], item, inner))
    return "".join(out)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """What Ollama sends to the model: system text in .System, every message in .Messages."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    root = {
        "System": system,
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
    }
    return _run(_parse(template), root, {"$": root})


CONVERSATION = [
    {"role": "system", "content": "You are a terse travel agent."},
    {"role": "user", "content": "Where should I go in May?"},
    {"role": "assistant", "content": "Lisbon: warm, not yet crowded."},
    {"role": "user", "content": "And for three days only?"},
]


@pytest.mark.parametrize("arch", ARCHES)
def test_modelfile_template_renders_the_hf_chat_template(tiny_model, arch):
    from slmforge.models.load import load_tokenizer
    from slmforge.optimize.gguf.tokenizer import read_vocabulary

    folder = tiny_model(arch)
    tokenizer = load_tokenizer(folder)
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
    add_bos = read_vocabulary(folder, vocab_size, []).add_bos
    template = ollama_template(tokenizer, add_bos)
    assert template is not None
    hf = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token if add_bos else ""  # llama.cpp adds it as a token
    assert hf == (bos or "") + render_go(template, CONVERSATION)
    if not add_bos and tokenizer.bos_token:
        assert template.startswith(tokenizer.bos_token)


def test_modelfile_lines(tiny_model, tmp_path):
    adapter = _strong_adapter(tiny_model("qwen2"), tmp_path / "a", ["q_proj"], seed=3)
    out = _export(
        tiny_model("qwen2"), tmp_path / "gguf", precision="q4_0", adapter=[f"ask={adapter}"]
    )
    base = (out / "Modelfile").read_text()
    assert "FROM ./model-q4_0.gguf" in base and "ADAPTER" not in base
    assert 'PARAMETER stop "<|im_end|>"' in base
    assert 'SYSTEM """You are a helpful assistant."""' in base  # Qwen's default system turn
    with_adapter = (out / "Modelfile.ask").read_text()
    assert "ADAPTER ./ask.gguf" in with_adapter
    template = re.search(r'TEMPLATE """(.*?)"""', base, re.S).group(1)
    tokenizer_text = render_go(template, CONVERSATION)
    assert tokenizer_text.endswith("<|im_start|>assistant\n")


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_unsupported_family_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="GGUF export supports llama, mistral, qwen2, phi3"):
        _export(folder, tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_unknown_precision_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="--precision: Input should be 'f16', 'q8_0'"):
        validate(
            GgufConfig,
            {"model": "m", "out": str(tmp_path / "o"), "precision": "q5_0"},
            option_keys={"precision"},
        )


def test_adapter_of_another_base_is_refused(tiny_model, llama_adapters, tmp_path):
    with pytest.raises(InputError, match="adapter travel was trained on a different base"):
        _export(
            tiny_model("qwen2"), tmp_path / "out", adapter=[f"travel={llama_adapters['travel']}"]
        )
    _nothing_left(tmp_path / "out")


def test_adapter_without_records_is_checked_by_shape(tiny_model, llama_adapters, tmp_path):
    """No slmforge.json and no local base path: the tensors themselves must fit the base."""
    adapter = tmp_path / "bare"
    adapter.mkdir()
    shutil.copy(llama_adapters["travel"] / "adapter_model.safetensors", adapter)
    config = json.loads((llama_adapters["travel"] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/else"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"different base: model\.layers\.0\.self_attn\.q_proj"):
        _export(tiny_model("phi3"), tmp_path / "out", adapter=[f"bare={adapter}"])
    _nothing_left(tmp_path / "out")


def test_existing_output_needs_force(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists; pass --force"):
        _export(tiny_model("llama"), out, precision="f16")
    assert (out / "keep.txt").read_text() == "mine"


def test_q4_k_m_without_llama_cpp_says_what_to_install(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(InputError, match="llama-cpp-python"):
        _export(tiny_model("llama"), tmp_path / "out", precision="q4_k_m")
    _nothing_left(tmp_path / "out")


def test_failed_verification_keeps_nothing(tiny_model, tmp_path):
    with pytest.raises(RunError, match="GGUF verification failed for base"):
        _export(tiny_model("llama"), tmp_path / "out", precision="q4_0", max_kl=0.0)
    _nothing_left(tmp_path / "out")


def test_optimize_format_gguf_is_the_cli_and_workflow_door(tiny_model, tmp_path) -> None:
    """`slmforge optimize --format gguf` reaches the same export; ONNX and GGUF precisions are
    checked against the format (one clear line, exit 2)."""
    import subprocess
    import sys

    slmforge = str(Path(sys.executable).with_name("slmforge"))
    out = tmp_path / "gguf"
    command = [slmforge, "optimize", "--model", str(tiny_model("llama")), "--out", str(out)]
    done = subprocess.run([*command, "--format", "gguf", "--precision", "int8"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "model-q8_0.gguf").is_file() and (out / "Modelfile").is_file()
    assert "Q8_0 GGUF model" in done.stdout or "q8_0 GGUF model" in done.stdout
    bad = subprocess.run([*command, "--precision", "q4_0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "is a GGUF precision; add --format gguf" in bad.stderr
    assert not (tmp_path / "onnx").exists()
