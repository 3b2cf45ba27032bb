"""SentencePiece-style tokenizers as llama.cpp's `llama` tokenizer model: scores from the merge
ranks, token types, special ids, the space prefix, the Python model of llama.cpp's tokenizer
against the Hugging Face tokenizer, and the tokenizers that are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("gguf")

from gguf import TokenType as T

from slmforge.errors import InputError
from slmforge.optimize.gguf import spm
from slmforge.optimize.gguf.tokenizer import (
    llama_cpp_rstrip,
    matched_specials,
    read_vocabulary,
)
from spm_helpers import (
    FAMILY_TOKENIZERS,
    PHI3_CHAT,
    family_tokenizer,
    save_tokenizer,
    sentencepiece_tokenizer,
)

EXTRA_ROWS = 5


def _folder(tokenizer, path: Path, tokenizer_class: str = "PreTrainedTokenizerFast") -> Path:
    save_tokenizer(tokenizer, path, tokenizer_class)
    return path


@pytest.fixture(scope="module")
def mistral_style(tmp_path_factory) -> tuple[object, Path]:
    tokenizer = family_tokenizer("mistral")
    return tokenizer, _folder(tokenizer, tmp_path_factory.mktemp("mistral-spm"))


@pytest.fixture(scope="module")
def phi3_style(tmp_path_factory) -> tuple[object, Path]:
    tokenizer = family_tokenizer("phi3")
    return tokenizer, _folder(tokenizer, tmp_path_factory.mktemp("x") / "phi3-spm")


def _llama(vocab, name: str = "model") -> spm.LlamaSpm:
    strips = llama_cpp_rstrip(name, vocab.tokens, vocab.types)
    return spm.LlamaSpm(vocab.tokens, vocab.scores, matched_specials(vocab.tokens, vocab.types),
                        strips)  # fmt: skip


def test_scores_follow_the_merge_ranks() -> None:
    """A piece scores minus the rank of the first merge that makes it, whatever its id;
    pieces no merge makes score below every merge."""
    tokens = ["<unk>", "a", "b", "c", "bc", "ab", "abc", "zz"]
    merges = ["b c", ["a", "b"], "ab c", "a bc"]  # both tokenizers.json merge forms
    scores = spm.merge_scores(merges, tokens)
    assert scores[tokens.index("bc")] == 0.0
    assert scores[tokens.index("ab")] == -1.0
    assert scores[tokens.index("abc")] == -2.0  # its first merge, not "a bc"
    floor = -5.0
    assert [scores[tokens.index(t)] for t in ("<unk>", "a", "b", "c", "zz")] == [floor] * 5


def test_llama_cpp_merges_by_score_not_left_to_right() -> None:
    """Why the scores matter: with merge "b c" ranked before "a b", "abc" is a + bc in the
    Hugging Face BPE; llama.cpp gets the same from the rank scores, and ab + c when every
    piece scores the same (llama.cpp's own converter gives tokenizer.json-only models -1000)."""
    tokens = [*spm.BYTE_TOKENS, "a", "b", "c", "bc", "ab"]
    ranked = spm.LlamaSpm(tokens, spm.merge_scores(["b c", "a b"], tokens), [], frozenset())
    flat = spm.LlamaSpm(tokens, [-1000.0] * len(tokens), [], frozenset())
    pieces = [tokens[i] for i in ranked.encode("abc", add_space_prefix=False)]
    assert pieces == ["a", "bc"]
    assert [tokens[i] for i in flat.encode("abc", add_space_prefix=False)] == ["ab", "c"]
    # what no piece covers falls back to its UTF-8 bytes
    assert [tokens[i] for i in ranked.encode("é", False)] == ["<0xC3>", "<0xA9>"]


def test_the_tokenizer_is_sentencepiece_like(mistral_style) -> None:
    """The test tokenizer itself: Llama 2's layout, byte fallback, and text round-trips."""
    tokenizer, _ = mistral_style
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 258]) == [
        "<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"
    ]  # fmt: skip
    text = "Tabs\tand  spaces, 日本語 🙂\nnew line"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == text
    assert {"<0xE6>", "<0xF0>"} <= set(tokenizer.convert_ids_to_tokens(ids))  # byte fallback
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello")["input_ids"])[1].startswith("▁")


def test_vocabulary_tokens_types_and_ids(mistral_style) -> None:
    tokenizer, folder = mistral_style
    size = len(tokenizer) + EXTRA_ROWS
    vocab = read_vocabulary(folder, size, ["</s>"])
    assert vocab.model == "llama" and vocab.pre == "default" and vocab.merges == []
    assert vocab.tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    assert vocab.tokens[-1] == f"[PAD{size - 1}]" and vocab.types[-EXTRA_ROWS:] == [T.UNUSED] * 5
    assert vocab.types[:4] == [T.UNKNOWN, T.CONTROL, T.CONTROL, T.BYTE]
    assert set(vocab.types[3:259]) == {T.BYTE}
    assert set(vocab.types[259 : len(tokenizer)]) == {T.NORMAL}
    assert any(t.startswith("▁") for t in vocab.tokens)  # the space marker is kept
    assert (vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.eot_id) == (0, 1, 2, None)
    assert vocab.add_bos is True and vocab.add_space_prefix is True
    assert vocab.mismatches == ()
    assert len(vocab.scores) == size


def test_phi3_chat_tokens_and_end_of_turn(phi3_style) -> None:
    tokenizer, folder = phi3_style
    vocab = read_vocabulary(folder, len(tokenizer), ["<|end|>", "<|endoftext|>"])
    ids = {t: vocab.tokens.index(t) for t in PHI3_CHAT}
    assert all(vocab.types[i] == T.CONTROL for i in ids.values())
    assert vocab.eos_id == ids["<|endoftext|>"] and vocab.eot_id == ids["<|end|>"]
    assert vocab.add_bos is False and vocab.mismatches == ()
    # llama.cpp's Phi-3 rule (by name) strips whitespace after the tokens Phi-3's tokenizer does
    strips = FAMILY_TOKENIZERS["phi3"]["rstrip"]
    assert llama_cpp_rstrip(folder.name, vocab.tokens, vocab.types) == strips
    assert llama_cpp_rstrip("mistral", vocab.tokens, vocab.types) == frozenset()


def _texts(tokenizer) -> list[str]:
    from slmforge.models.corpus import stdlib_docstrings

    rng = random.Random(0)
    alphabet = "ab cdé日\n\t  ▁<>s/|0x1"
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(150)]
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": doc[:200]}], add_generation_prompt=True, tokenize=False
        )
        for doc in stdlib_docstrings(300_000)[-40:]
    ]
    return [*stdlib_docstrings(300_000)[-200:], *noise, *chats, "<s>Hi</s> there<unk>"]


@pytest.mark.parametrize("style", ["mistral_style", "phi3_style"])
def test_llama_cpp_tokenization_matches_hf(request, style) -> None:
    """The Python model of llama.cpp's tokenizer on the written vocabulary gives the Hugging
    Face ids on docstrings, chats and random strings of spaces, tabs, newlines, bytes and
    special-token look-alikes. (Against llama.cpp itself: the integration tests.)"""
    tokenizer, folder = request.getfixturevalue(style)
    vocab = read_vocabulary(folder, len(tokenizer), [])
    llama = _llama(vocab, folder.name)
    differing = [
        text
        for text in _texts(tokenizer)
        if llama.encode(text, vocab.add_space_prefix)
        != tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    assert differing == []


def test_prefix_only_at_the_start_fits_the_chats_and_reports_plain_text(tmp_path) -> None:
    """transformers' LlamaTokenizer (legacy=False) puts '▁' before the text but not after
    special tokens; llama.cpp does both or neither. Chat prompts decide (they open with special
    tokens), and the plain texts that then differ are reported."""
    from slmforge.models.chat import FORMATS

    tokenizer = sentencepiece_tokenizer(chat_template=FORMATS["mistral"].template)
    folder = _folder(tokenizer, tmp_path / "llama2", "LlamaTokenizer")
    vocab = read_vocabulary(folder, len(tokenizer), [])
    assert vocab.add_space_prefix is False
    assert "Hello world" in vocab.mismatches
    assert not [text for text in vocab.mismatches if "[INST]" in text]


def _spec(model: dict, **parts: object) -> dict:
    return {"model": model, "added_tokens": [], **parts}


def _write(tmp_path: Path, spec: dict) -> Path:
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return tmp_path


SPM_PARTS = {
    "normalizer": {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
}


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ({"type": "Unigram", "vocab": [["<unk>", 0.0]]}, "a Unigram tokenizer"),
        ({"type": "WordPiece", "vocab": {"[UNK]": 0}}, "a WordPiece tokenizer"),
        ({"type": "BPE", "vocab": {"a": 0}, "merges": []}, "a BPE without byte-level encoding"),
    ],
)
def test_other_tokenizers_are_refused_naming_the_file(tmp_path, model, kind) -> None:
    folder = _write(tmp_path, _spec(model, **SPM_PARTS))
    with pytest.raises(InputError) as raised:
        read_vocabulary(folder, 8, [])
    message = str(raised.value)
    assert message.startswith(f"{folder / 'tokenizer.json'}: {kind}")
    assert "SentencePiece-style BPE with byte fallback (Llama 2, Mistral 7B, Phi-3)" in message
    assert "byte-level BPE (Llama 3, Qwen2, GPT-2 style)" in message


def test_byte_fallback_without_the_byte_tokens_is_refused(tmp_path) -> None:
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(spm.BYTE_TOKENS[:200])}}
    model = {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": True}
    folder = _write(tmp_path, _spec(model, **SPM_PARTS))
    with pytest.raises(InputError, match=r"without the byte tokens <0xC8> and others; llama\.cpp"):
        read_vocabulary(folder, 300, [])


def test_duplicate_tokens_are_refused(tmp_path) -> None:
    vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(spm.BYTE_TOKENS)}, "▁a": 257}
    model = {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": True}
    added = [{"id": 258, "content": "▁a", "special": False}]
    folder = _write(tmp_path, {**_spec(model, **SPM_PARTS), "added_tokens": added})
    with pytest.raises(InputError, match=r"token '▁a' has ids 257 and 258; llama\.cpp refuses"):
        read_vocabulary(folder, 300, [])


def test_space_marker_and_prefix_are_read_from_either_form() -> None:
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}
    model = {"type": "BPE", "byte_fallback": True}
    assert spm.is_sentencepiece_style(_spec(model, pre_tokenizer=metaspace))
    assert spm.declared_space_prefix(_spec(model, pre_tokenizer=metaspace))
    assert spm.declared_space_prefix(_spec(model, **SPM_PARTS))
    never = {**metaspace, "prepend_scheme": "never"}
    assert not spm.declared_space_prefix(_spec(model, pre_tokenizer=never))
    assert not spm.is_sentencepiece_style(_spec({"type": "BPE"}, **SPM_PARTS))
