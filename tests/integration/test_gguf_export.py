"""GGUF export on the tiny models: parity with PyTorch per precision and family, LoRA adapter
files against the merged PyTorch model, Ollama templates against the Hugging Face chat
templates, SentencePiece-style tokenizers as llama.cpp's SPM tokenizer (against llama.cpp
itself when llama-cpp-python is installed), and bad input."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gguf")

from go_template import render_go
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


# SentencePiece-style tokenizers (Llama 2, Mistral 7B, Phi-3): llama.cpp's `llama` tokenizer model
SPM_ARCHES = ["mistral", "phi3"]
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
TOKENIZE = [
    "Hello world",
    " leading space",
    "two  spaces,\ta tab and a trailing space ",
    "lines\nand\n\nparagraphs\n",
    "unicode: café, naïve, Ελληνικά, 日本語 and 🙂",
    "digits 1234567890, 3.14 and -42",
    "bytes no piece covers: \x00\x7f Ǆ ∮",
]


@pytest.fixture(scope="module")
def spm_export(tmp_path_factory) -> Any:
    """arch -> (a tiny random model with a SentencePiece-style tokenizer, its f16 export)."""
    from spm_helpers import family_tokenizer, sentencepiece_model

    built: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in built:
            root = tmp_path_factory.mktemp(f"spm-{arch}")
            model = sentencepiece_model(arch, root / f"{arch}-spm", family_tokenizer(arch))
            built[arch] = (model, _export(model, root / "gguf", precision="f16"))
        return built[arch]

    return get


def _spm_texts(tokenizer: Any) -> list[str]:
    chat = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    specials = "".join(f"{t} x{t}\n" for t in tokenizer.all_special_tokens)
    return [*TOKENIZE, chat, specials]


@pytest.mark.parametrize("arch", SPM_ARCHES)
def test_sentencepiece_tokenizer_exports_as_llama_spm(spm_export, arch):
    from gguf import TokenType

    from slmforge.models.load import load_tokenizer

    model, out = spm_export(arch)
    assert _parity(out)["base"]["max_logit_diff"] < 1e-2
    hf = load_tokenizer(model)
    size = json.loads((model / "config.json").read_text())["vocab_size"]
    file = GgufTensors(out / "model-f16.gguf")
    assert file.field("tokenizer.ggml.model") == "llama"
    assert file.field("tokenizer.ggml.pre") == "default"
    assert file.field("tokenizer.ggml.merges") is None
    tokens = file.field("tokenizer.ggml.tokens")
    assert tokens == [*hf.convert_ids_to_tokens(range(len(hf))), *(
        f"[PAD{i}]" for i in range(len(hf), size))]  # fmt: skip
    types = file.field("tokenizer.ggml.token_type")
    assert types[:4] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.BYTE]
    assert {types[i] for i in range(3, 259)} == {TokenType.BYTE}
    assert {types[i] for i in hf.all_special_ids} <= {TokenType.CONTROL, TokenType.UNKNOWN}
    assert types[len(hf) :] == [TokenType.UNUSED] * (size - len(hf))
    # the first merges of tokenizer.json make the highest-scoring pieces, in their order
    merges = json.loads((model / "tokenizer.json").read_text())["model"]["merges"][:30]
    scores = file.field("tokenizer.ggml.scores")
    made = [tokens.index("".join(m)) for m in merges]
    firsts = [i for n, i in enumerate(made) if i not in made[:n]]
    assert [scores[i] for i in firsts] == sorted((scores[i] for i in firsts), reverse=True)
    assert max(scores) == scores[firsts[0]] == 0.0
    assert file.field("tokenizer.ggml.unknown_token_id") == 0
    assert file.field("tokenizer.ggml.bos_token_id") == 1
    assert file.field("tokenizer.ggml.eos_token_id") == hf.eos_token_id
    assert file.field("tokenizer.ggml.add_bos_token") is (arch == "mistral")
    assert file.field("tokenizer.ggml.add_space_prefix") is True
    end = file.field("tokenizer.ggml.eot_token_id")
    assert end == (hf.convert_tokens_to_ids("<|end|>") if arch == "phi3" else None)
    details = read_manifest(out).details
    assert details["tokenizer_model"] == "llama"
    assert details["llama_cpp_tokenizer_mismatches"] == []
    template = re.search(r'TEMPLATE """(.*?)"""', (out / "Modelfile").read_text(), re.S).group(1)
    bos = hf.bos_token if arch == "mistral" else ""  # llama.cpp adds it as a token
    chat = hf.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert chat == bos + render_go(template, CONVERSATION)


def test_sentencepiece_prefix_only_at_the_start_is_reported(tmp_path, monkeypatch):
    """transformers' LlamaTokenizer (which Llama 2 style checkpoints name) puts '▁' before the
    text but not after special tokens, and llama.cpp can do both or neither: the export keeps
    the chat prompts exact (no prefix) and warns that plain text differs."""
    from slmforge import progress
    from slmforge.models.chat import FORMATS
    from slmforge.models.load import load_tokenizer
    from spm_helpers import save_tokenizer, sentencepiece_model, sentencepiece_tokenizer

    warnings: list[str] = []
    monkeypatch.setattr(progress, "warn", lambda message, **_: warnings.append(message))
    tokenizer = sentencepiece_tokenizer(chat_template=FORMATS["mistral"].template)
    model = sentencepiece_model("llama", tmp_path / "llama2", tokenizer)
    save_tokenizer(tokenizer, model, "LlamaTokenizer")
    out = _export(model, tmp_path / "gguf", precision="f16")
    details = read_manifest(out).details
    assert details["add_space_prefix"] is False
    assert "Hello world" in details["llama_cpp_tokenizer_mismatches"]
    assert [w for w in warnings if "llama.cpp will tokenize" in w and "'Hello world'" in w]
    path = out / "model-f16.gguf"
    assert GgufTensors(path).field("tokenizer.ggml.add_space_prefix") is False
    hf = load_tokenizer(model)
    tokenize = _llama_cpp_tokenizer(path) if HAS_LLAMA_CPP else _tokenizer_from_file(path)
    chat = hf.apply_chat_template(CONVERSATION[1:], add_generation_prompt=True, tokenize=False)
    assert tokenize(chat) == hf(chat, add_special_tokens=False)["input_ids"]
    assert tokenize("Hello world") != hf("Hello world", add_special_tokens=False)["input_ids"]


def _llama_cpp_tokenizer(path: Path) -> Any:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

    def tokenize(text: str, with_bos: bool = False) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=with_bos, special=True)

    return tokenize


def _tokenizer_from_file(path: Path) -> Any:
    """llama.cpp's tokenization as spm.py models it, from the file's own metadata."""
    from slmforge.optimize.gguf import spm
    from slmforge.optimize.gguf.tokenizer import matched_specials, phi3_rstrip

    file = GgufTensors(path)
    tokens, types = file.field("tokenizer.ggml.tokens"), file.field("tokenizer.ggml.token_type")
    phi3 = "phi3" in file.field("general.name").lower()
    strips = phi3_rstrip(tokens, types) if phi3 else frozenset()
    llama = spm.LlamaSpm(tokens, file.field("tokenizer.ggml.scores"),
                         matched_specials(tokens, types), strips)  # fmt: skip
    prefix = file.field("tokenizer.ggml.add_space_prefix")
    bos = file.field("tokenizer.ggml.bos_token_id")
    add_bos = file.field("tokenizer.ggml.add_bos_token")

    def tokenize(text: str, with_bos: bool = False) -> list[int]:
        return [bos] * (with_bos and add_bos) + llama.encode(text, prefix)

    return tokenize


@pytest.mark.parametrize("arch", SPM_ARCHES)
def test_sentencepiece_gguf_tokenizes_and_runs_like_hugging_face(spm_export, arch):
    """llama.cpp tokenizes spaces, newlines, unicode, digits, byte fallback, special tokens and
    a chat as the Hugging Face tokenizer does, and its logits match PyTorch's. Without
    llama-cpp-python (CI builds none, and CI=true fails a skipped test) the tokenization is
    checked through spm.py's model of llama.cpp's tokenizer on the file's metadata, and the
    logits through the export's own verification (the fixture)."""
    from slmforge.models.load import load_tokenizer

    model, out = spm_export(arch)
    hf = load_tokenizer(model)
    path = out / "model-f16.gguf"
    if HAS_LLAMA_CPP:
        import llama_cpp

        llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False)

        def tokenize(text: str, with_bos: bool = False) -> list[int]:
            return llm.tokenize(text.encode(), add_bos=with_bos, special=True)
    else:
        tokenize = _tokenizer_from_file(path)
    texts = _spm_texts(hf)
    for text in texts:
        assert tokenize(text) == hf(text, add_special_tokens=False)["input_ids"], text
    assert tokenize("Hello", with_bos=True) == hf("Hello")["input_ids"]
    if HAS_LLAMA_CPP:
        _logits_match_pytorch(llm, model, hf(texts[-2], add_special_tokens=False)["input_ids"])


def _logits_match_pytorch(llm: Any, model: Path, ids: list[int]) -> None:
    import torch

    from slmforge.models.load import load_causal_lm

    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    with torch.inference_mode():
        reference = load_causal_lm(model, dtype="float32")(torch.tensor([ids])).logits[0].numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-2
