"""The tokenizer in GGUF metadata: llama.cpp's `gpt2` (byte-level BPE) or `llama` (SentencePiece)
tokenizer model, with the special ids, BOS behaviour and chat template.

Byte-level BPE (Llama 3, Qwen2, GPT-2 style): llama.cpp re-implements each pre-tokenizer (the
regex that splits text before BPE) and picks one by the name in `tokenizer.ggml.pre`; its
converter finds that name by hashing the token ids of a test string. Here the name comes from the
pre-tokenizer itself in tokenizer.json, for the ones whose llama.cpp counterpart is known; any
other is refused rather than guessed, since a wrong pre-tokenizer gives different token ids
without any error. SentencePiece-style BPE (Llama 2, Mistral 7B, Phi-3): spm.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import InputError
from slmforge.optimize.gguf import spm

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
    merges: list[str]  # byte-level BPE only
    pre: str
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None  # the token that ends an assistant turn, when it is not eos
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    model: str = "gpt2"  # llama.cpp's tokenizer model: "gpt2" or "llama" (SentencePiece)
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None  # SentencePiece only
    unk_id: int | None = None
    # texts llama.cpp would tokenize differently from the Hugging Face tokenizer (spm.py)
    mismatches: tuple[str, ...] = ()


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
    """The vocabulary of tokenizer.json, padded to the model's `vocab_size` with unused
    tokens, as llama.cpp's converter pads it (the embedding has those rows)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{folder}: no tokenizer.json (GGUF export reads the fast tokenizer)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and (spec.get("decoder") or {}).get("type") == "ByteLevel":
        return _byte_level(folder, spec, vocab_size, stop)
    if spm.is_sentencepiece_style(spec):
        return _sentencepiece(folder, spec, vocab_size, stop)
    kind = model.get("type", "unknown")
    if kind == "BPE":
        kind = "BPE without byte-level encoding or SentencePiece byte fallback"
    raise InputError(
        f"{path}: a {kind} tokenizer does not convert to GGUF here; supported: byte-level BPE "
        "(Llama 3, Qwen2, GPT-2 style) and SentencePiece-style BPE with byte fallback (Llama 2, "
        "Mistral 7B, Phi-3); convert others with llama.cpp's convert_hf_to_gguf.py"
    )


def _byte_level(folder: Path, spec: dict[str, Any], vocab_size: int, stop: list[str]) -> Vocabulary:
    import gguf

    pre = pre_tokenizer_name(spec, folder)
    tokens, types, ids = _token_table(folder, spec, vocab_size, lambda _: gguf.TokenType.NORMAL)
    model = spec["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return _with_specials(folder, tokens, types, ids, stop, merges=merges, pre=pre)


def _sentencepiece(
    folder: Path, spec: dict[str, Any], vocab_size: int, stop: list[str]
) -> Vocabulary:
    """llama.cpp's `llama` tokenizer model: pieces with their `▁`, scores from the merge
    ranks, byte tokens typed BYTE and unk UNKNOWN (spm.py)."""
    import gguf

    from slmforge.models.load import load_tokenizer

    model = spec["model"]
    missing = spm.missing_byte_tokens(model["vocab"])
    if missing:
        raise InputError(
            f"{folder / 'tokenizer.json'}: byte fallback without the byte tokens {missing[0]}"
            f"{' and others' if len(missing) > 1 else ''}; llama.cpp's SentencePiece tokenizer "
            "needs all 256 of <0x00>..<0xFF>"
        )
    unk = model.get("unk_token")
    kinds = gguf.TokenType

    def kind(piece: str) -> Any:
        if piece == unk:
            return kinds.UNKNOWN
        return kinds.BYTE if piece in spm.BYTE_TOKENS else kinds.NORMAL

    tokens, types, ids = _token_table(folder, spec, vocab_size, kind, unk=unk)
    scores = spm.merge_scores(model.get("merges", []), tokens)
    specials = matched_specials(tokens, types)
    llama = spm.LlamaSpm(tokens, scores, specials, llama_cpp_rstrip(folder.name, tokens, types))
    hf = load_tokenizer(folder)
    prefix, mismatches = spm.fit_space_prefix(hf, llama, spm.declared_space_prefix(spec))
    return _with_specials(
        folder,
        tokens,
        types,
        ids,
        stop,
        hf=hf,
        model="llama",
        pre="default",
        scores=scores,
        add_space_prefix=prefix,
        mismatches=mismatches,
    )


def _token_table(
    folder: Path,
    spec: dict[str, Any],
    vocab_size: int,
    kind: Callable[[str], Any],
    unk: str | None = None,
) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens and types by id: the model's vocabulary typed by `kind`, the added tokens
    CONTROL when special (UNKNOWN for `unk`), USER_DEFINED when not, padding UNUSED.
    Also the added tokens' ids by text."""
    import gguf

    path = folder / "tokenizer.json"
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, token_id in spec["model"]["vocab"].items():
        _set(tokens, types, token_id, token, kind(token), path)
    ids: dict[str, int] = {}
    for added in spec.get("added_tokens", []):
        content = added["content"]
        if content == unk:
            added_kind = gguf.TokenType.UNKNOWN
        elif added.get("special"):
            added_kind = gguf.TokenType.CONTROL
        else:
            added_kind = gguf.TokenType.USER_DEFINED
        _set(tokens, types, added["id"], content, added_kind, path)
        ids[content] = added["id"]
    _refuse_duplicates(tokens, path)
    return tokens, types, ids


def _refuse_duplicates(tokens: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in seen:
            raise InputError(
                f"{path}: token {token!r} has ids {seen[token]} and {i}; llama.cpp refuses a "
                "vocabulary with duplicate tokens"
            )
        seen[token] = i


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
    ids: dict[str, int],
    stop: list[str],
    hf: Any = None,
    **fields: Any,
) -> Vocabulary:
    """Add the special ids, BOS behaviour and chat template that tokenizer_config.json and
    the tokenizer itself define."""
    from slmforge.models.load import load_tokenizer

    hf = hf if hf is not None else load_tokenizer(folder)
    index = {token: i for i, token in enumerate(tokens)}

    def token_id(token: str | None) -> int | None:
        return None if token is None else ids.get(str(token), index.get(str(token)))

    eos_id = token_id(hf.eos_token)
    end_of_turn = [token_id(s) for s in stop if token_id(s) not in (None, eos_id)]
    template = hf.chat_template if isinstance(hf.chat_template, str) else None
    return Vocabulary(
        tokens=tokens,
        types=types,
        bos_id=token_id(hf.bos_token),
        eos_id=eos_id,
        eot_id=end_of_turn[0] if end_of_turn else None,
        pad_id=token_id(hf.pad_token),
        unk_id=token_id(hf.unk_token),
        # llama.cpp adds BOS itself when the Hugging Face tokenizer does
        add_bos=hf.bos_token_id is not None and hf("a")["input_ids"][:1] == [hf.bos_token_id],
        chat_template=template,
        merges=fields.pop("merges", []),
        **fields,
    )


# llama.cpp sets Phi-3's special-token attributes when general.name contains one of these,
# looking the tokens up by text: whitespace after every special token is stripped, except
# after these (which must all exist, or the model fails to load)
_PHI3_NAMES = ("phi-3", "phi3")
_PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")
_PHI3_KEEP = ("<unk>", "<s>", "<|endoftext|>")


def _phi3_rule(name: str) -> bool:
    return any(key in name.lower() for key in _PHI3_NAMES)


def phi3_rstrip(tokens: list[str], types: list[int]) -> frozenset[str]:
    """The tokens llama.cpp strips whitespace after when it applies its Phi-3 rule."""
    special = {*matched_specials(tokens, types), "</s>"}
    return frozenset(special - set(_PHI3_KEEP))


def matched_specials(tokens: list[str], types: list[int]) -> list[str]:
    """The tokens llama.cpp finds in text before tokenizing the rest (CONTROL, USER_DEFINED
    and UNKNOWN types)."""
    import gguf

    kinds = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED, gguf.TokenType.UNKNOWN)
    return [t for t, k in zip(tokens, types, strict=True) if k in kinds]


def llama_cpp_rstrip(name: str, tokens: list[str], types: list[int]) -> frozenset[str]:
    """The tokens llama.cpp will strip whitespace after, for the `general.name` it gets."""
    if _phi3_rule(model_name(name, tokens)):
        return phi3_rstrip(tokens, types)
    return frozenset()


def model_name(name: str, tokens: list[str]) -> str:
    """`general.name` for a model folder's name, spaced out of llama.cpp's Phi-3 name match
    when the vocabulary lacks the tokens that match would look up."""
    if not _phi3_rule(name) or set(_PHI3_TOKENS) <= set(tokens):
        return name
    for key in _PHI3_NAMES:
        start = name.lower().find(key)
        while start >= 0:
            name = name[: start + 3] + " " + name[start + 3 :].lstrip("-")
            start = name.lower().find(key)
    return name


def add_vocabulary(writer: Any, vocab: Vocabulary) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for token_id, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.eot_id, writer.add_eot_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
        (vocab.unk_id, writer.add_unk_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
