"""Convert a Hugging Face Llama folder (safetensors + a byte-level BPE tokenizer.json, as
`slmforge models tiny` writes) to GGUF for llama.cpp, offline, then check llama.cpp against
PyTorch on a prompt. The benchmarks use it to give llama.cpp the very weights slmforge serves.

llama.cpp's own converter needs its source tree; this writes the file with the `gguf` package's
`GGUFWriter`: llama hyper-parameters, tensors under llama.cpp's names (q/k rows permuted from
Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one, as its converter does),
and the tokenizer as a `gpt2` BPE (token list, merges, the GPT-2 pre-tokenizer regex that
`tokenizers`' ByteLevel uses). f32 and f16 are written directly; q8_0 and q4_0 come from
llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`). Needs the `bench` extra.

    .venv/bin/python benchmarks/gguf_export.py MODEL_DIR --out model.gguf --type q4_0
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

import numpy as np

TYPES = ("f32", "f16", "q8_0", "q4_0")
PARITY_PROMPT = "The return value is a list of the names of the files in the directory"

# Hugging Face name (after `model.layers.N.`) -> llama.cpp name (after `blk.N.`)
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first halves, second halves] to interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama_tensors(folder: Path, config: dict) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(path))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    out = {}
    for name, tensor in weights.items():
        if name in TOP_TENSORS:
            out[TOP_TENSORS[name]] = tensor
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            tensor = permute_rope(tensor, heads)
        elif rest == "self_attn.k_proj.weight":
            tensor = permute_rope(tensor, kv_heads)
        out[f"blk.{layer}.{LAYER_TENSORS[rest]}"] = tensor
    if "output.weight" not in out and not config.get("tie_word_embeddings"):
        raise SystemExit(f"{folder}: no lm_head.weight and embeddings are not tied")
    return out


def add_tokenizer(writer, folder: Path, vocab_size: int) -> None:
    import gguf

    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    if model["type"] != "BPE" or spec["pre_tokenizer"].get("type") != "ByteLevel":
        raise SystemExit(f"{folder}: only byte-level BPE tokenizers are supported")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, token_id in model["vocab"].items():
        tokens[token_id], types[token_id] = token, gguf.TokenType.NORMAL
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the regex of tokenizers' ByteLevel pre-tokenizer
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    ids = {added["content"]: added["id"] for added in spec["added_tokens"]}
    writer.add_bos_token_id(ids[settings["bos_token"]])
    writer.add_eos_token_id(ids[settings["eos_token"]])
    if "<|eot_id|>" in ids:  # end of turn: llama.cpp stops there too
        writer.add_eot_token_id(ids["<|eot_id|>"])
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    writer.add_add_bos_token(hf("a")["input_ids"][:1] == [hf.bos_token_id])
    if settings.get("chat_template"):
        writer.add_chat_template(settings["chat_template"])


def export(folder: Path, out: Path, kind: str = "f16") -> Path:
    """Write `folder` as GGUF (`kind` f32, f16, or q8_0/q4_0 via an f16 file and llama.cpp)."""
    import gguf

    if kind in ("q8_0", "q4_0"):
        f16 = out.with_name(out.stem + ".f16.gguf")
        export(folder, f16, "f16")
        quantize(f16, out, kind)
        f16.unlink()
        return out
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise SystemExit(f"{folder}: only llama models are supported, not {config['model_type']}")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(
        gguf.LlamaFileType.ALL_F32 if kind == "f32" else gguf.LlamaFileType.MOSTLY_F16
    )
    add_tokenizer(writer, folder, config["vocab_size"])
    for name, tensor in llama_tensors(folder, config).items():
        tensor = tensor.astype(np.float32)
        if (
            kind == "f16" and tensor.ndim == 2
        ):  # norms stay f32, as llama.cpp's converter keeps them
            tensor = tensor.astype(np.float16)
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def quantize(source: Path, out: Path, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    }[kind]
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise SystemExit(f"llama.cpp could not quantize {source} to {kind} (status {status})")


def parity(folder: Path, gguf_path: Path, prompt: str = PARITY_PROMPT, steps: int = 16) -> dict:
    """llama.cpp vs PyTorch on `prompt`: same token ids, max |logit difference| at the prompt's
    last position, and greedy next-token agreement over `steps` positions fed the same history
    (PyTorch's greedy continuation, end-of-text suppressed so it runs `steps` tokens)."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        greedy = model.generate(
            torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )[0, len(ids) :].tolist()
        torch_logits = model(torch.tensor([ids + greedy])).logits[0].numpy()
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    llama_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.eval(ids + greedy)
    llama_logits = np.asarray(llm.scores[: len(ids) + steps])
    positions = range(len(ids) - 1, len(ids) + steps - 1)
    agree = sum(int(np.argmax(llama_logits[p]) == np.argmax(torch_logits[p])) for p in positions)
    return {
        "same_token_ids": llama_ids == ids,
        "max_abs_logit_diff": float(
            np.abs(llama_logits[len(ids) - 1] - torch_logits[len(ids) - 1]).max()
        ),
        "greedy_agreement": agree / steps,
        "pytorch_text": tokenizer.decode([int(np.argmax(torch_logits[p])) for p in positions]),
        "llama_cpp_text": tokenizer.decode([int(np.argmax(llama_logits[p])) for p in positions]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="Hugging Face Llama folder")
    parser.add_argument("--out", type=Path, required=True, help="GGUF file to write")
    parser.add_argument("--type", choices=TYPES, default="f16")
    parser.add_argument("--no-check", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args()
    export(args.model, args.out, args.type)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, {args.type})")
    if not args.no_check:
        for key, value in parity(args.model, args.out).items():
            print(f"  {key}: {value!r}")


if __name__ == "__main__":
    main()
