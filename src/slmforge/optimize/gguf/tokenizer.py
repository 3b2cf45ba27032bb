"""The tokenizer in GGUF metadata: a byte-level BPE as llama.cpp's `gpt2` tokenizer model.

llama.cpp re-implements each pre-tokenizer (the regex that splits text before BPE) and picks
one by the name in `tokenizer.ggml.pre`; its converter finds that name by hashing the token ids
of a test string. Here the name comes from the pre-tokenizer itself in tokenizer.json, for the
ones whose llama.cpp counterpart is known; any other is refused rather than guessed, since a
wrong pre-tokenizer gives different token ids without any error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import InputError

# The split regexes of tokenizers' `Split` pre-tokenizer -> llama.cpp's pre-tokenizer name
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_TOKENIZERS = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


@dataclass(frozen=True)
class Vocabulary:
    """What the GGUF metadata says about the tokenizer."""

    tokens: list[str]
    types: list[int]  # gguf.TokenType per token
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None  # the token that ends an assistant turn, when it is not eos
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def pre_tokenizer_name(spec: dict[str, Any], folder: Path) -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # tokenizers' ByteLevel splits with GPT-2's regex
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        splits = [s for s in steps if s.get("type") == "Split"]
        byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte_level) == 1 and len(steps) == 2:
            regex = splits[0].get("pattern", {}).get("Regex")
            if regex in SPLIT_PRE_TOKENIZERS:
                return SPLIT_PRE_TOKENIZERS[regex]
    raise InputError(
        f"{folder / 'tokenizer.json'}: this pre-tokenizer has no known llama.cpp counterpart "
        f"(known: GPT-2 byte-level, Llama 3, Qwen2); convert it with llama.cpp's "
        "convert_hf_to_gguf.py"
    )


def read_vocabulary(folder: Path, vocab_size: int, stop: list[str]) -> Vocabulary:
    """The vocabulary of a byte-level BPE tokenizer.json, padded to the model's `vocab_size`
    with unused tokens, as llama.cpp's converter pads it (the embedding has those rows)."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{folder}: no tokenizer.json (GGUF export reads the fast tokenizer)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise InputError(
            f"{path}: only byte-level BPE tokenizers convert to GGUF here (Llama 3, Qwen2, "
            "GPT-2 style); SentencePiece-style ones need llama.cpp's convert_hf_to_gguf.py"
        )
    pre = pre_tokenizer_name(spec, folder)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, token_id in model["vocab"].items():
        _set(tokens, types, token_id, token, gguf.TokenType.NORMAL, path)
    ids: dict[str, int] = {}
    for added in spec.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        _set(tokens, types, added["id"], added["content"], kind, path)
        ids[added["content"]] = added["id"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return _with_specials(folder, tokens, types, merges, pre, ids, stop)


def _set(
    tokens: list[str], types: list[int], index: int, token: str, kind: Any, path: Path
) -> None:
    if index >= len(tokens):
        raise InputError(f"{path}: token id {index} is past the model's vocab_size {len(tokens)}")
    tokens[index], types[index] = token, int(kind)


def _with_specials(
    folder: Path,
    tokens: list[str],
    types: list[int],
    merges: list[str],
    pre: str,
    ids: dict[str, int],
    stop: list[str],
) -> Vocabulary:
    """Add the special ids, BOS behaviour and chat template that tokenizer_config.json and
    the tokenizer itself define."""
    from slmforge.models.load import load_tokenizer

    hf = load_tokenizer(folder)
    index = {token: i for i, token in enumerate(tokens)}

    def token_id(token: str | None) -> int | None:
        return None if token is None else ids.get(str(token), index.get(str(token)))

    eos_id = token_id(hf.eos_token)
    end_of_turn = [token_id(s) for s in stop if token_id(s) not in (None, eos_id)]
    template = hf.chat_template if isinstance(hf.chat_template, str) else None
    return Vocabulary(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre,
        bos_id=token_id(hf.bos_token),
        eos_id=eos_id,
        eot_id=end_of_turn[0] if end_of_turn else None,
        pad_id=token_id(hf.pad_token),
        # llama.cpp adds BOS itself when the Hugging Face tokenizer does
        add_bos=hf.bos_token_id is not None and hf("a")["input_ids"][:1] == [hf.bos_token_id],
        chat_template=template,
    )


def add_vocabulary(writer: Any, vocab: Vocabulary) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for token_id, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.eot_id, writer.add_eot_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
