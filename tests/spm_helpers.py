"""SentencePiece-style tokenizers and tiny models built offline, like Llama 2, Mistral 7B and Phi-3.

The tokenizer is laid out as those models' tokenizer.json files are: `<unk>`, `<s>`, `</s>` at
ids 0-2, the byte tokens `<0x00>`..`<0xFF>` next, then the BPE pieces with `▁` for spaces, and
chat tokens added after the vocabulary (as Phi-3's are). The pieces are trained with `tokenizers`
on standard-library docstrings, with a small alphabet so that rarer characters fall back to
bytes; the merges are then rebuilt the way transformers converts a SentencePiece model: every
split of every piece into two pieces, in the order of the pieces (SentencePiece's scores), so
the BPE in tokenizer.json merges as SentencePiece (and llama.cpp) does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
BASE_SPECIALS = ["<unk>", "<s>", "</s>"]


@functools.cache
def _trained_pieces(vocab: int) -> dict[str, int]:
    """Pieces by id (a cached dict: do not change it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from slmforge.models.corpus import stdlib_docstrings

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=[*BASE_SPECIALS, *BYTE_TOKENS],
        limit_alphabet=80,
        show_progress=False,
    )
    tok.train_from_iterator(stdlib_docstrings(300_000), trainer=trainer)
    return json.loads(tok.to_str())["model"]["vocab"]


def sentencepiece_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of every piece into two pieces, ordered by the piece's id, then by the
    halves' ids (transformers' SentencePiece extractor does the same with the scores)."""
    skip = {*BASE_SPECIALS, *BYTE_TOKENS}
    merges = []
    for piece, _ in sorted(vocab.items(), key=lambda item: item[1]):
        if piece in skip:
            continue
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        halves = [(a, b) for a, b in splits if a in vocab and b in vocab]
        merges += sorted(halves, key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
    return merges


def sentencepiece_tokenizer(
    vocab: int = 1200,
    chat_tokens: tuple[str, ...] = (),
    rstrip: frozenset[str] = frozenset(),
    add_bos: bool = True,
    eos: str = "</s>",
    chat_template: str | None = None,
) -> Any:
    """A Llama-2-style fast tokenizer (Prepend + Replace normalizers, ByteFallback decoder)
    with `chat_tokens` added as special tokens; `rstrip` names the added tokens after which
    it strips whitespace."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = _trained_pieces(vocab)
    tok = Tokenizer(
        models.BPE(
            vocab=pieces,
            merges=sentencepiece_merges(pieces),
            unk_token="<unk>",
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, rstrip=t in rstrip)
            for t in [*BASE_SPECIALS, *chat_tokens]
        ]
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=eos,
        unk_token="<unk>",
        pad_token=eos,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


# What each family's SentencePiece tokenizer looks like: Mistral 7B adds BOS and ends turns with
# </s>; Phi-3 adds its chat tokens after the vocabulary, strips whitespace after all special
# tokens but <unk>, <s> and <|endoftext|>, and adds no BOS
PHI3_CHAT = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
FAMILY_TOKENIZERS: dict[str, dict[str, Any]] = {
    "mistral": {"add_bos": True, "eos": "</s>"},
    "phi3": {
        "chat_tokens": PHI3_CHAT,
        "rstrip": frozenset({"</s>", *PHI3_CHAT} - {"<|endoftext|>"}),
        "add_bos": False,
        "eos": "<|endoftext|>",
    },
}


def family_tokenizer(arch: str) -> Any:
    from slmforge.models.chat import format_for_arch

    return sentencepiece_tokenizer(
        chat_template=format_for_arch(arch).template, **FAMILY_TOKENIZERS[arch]
    )


def save_tokenizer(tokenizer: Any, folder: Path, tokenizer_class: str) -> None:
    """Save with the chat template in tokenizer_config.json and the class hub models name."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = tokenizer_class
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def sentencepiece_model(arch: str, folder: Path, tokenizer: Any, extra_rows: int = 3) -> Path:
    """A tiny random-weight `arch` model (llama, mistral or phi3) with `tokenizer`, its
    embedding `extra_rows` larger than the vocabulary (as real models pad theirs)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Phi3Config

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "phi3":
        config: Any = Phi3Config(**common, original_max_position_embeddings=512)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        config = MistralConfig(**common, sliding_window=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder, "PreTrainedTokenizerFast")
    return folder
