"""Held-out pretraining text (models/corpus.py `split_corpus`, models/tiny.py `heldout_every`):
held-out docstrings and their chats never reach training or the tokenizer, and the build
records the model's next-token accuracy on them."""

from __future__ import annotations

from dataclasses import replace

from slmforge.artifacts import read_manifest
from slmforge.models import tiny
from slmforge.models.chat import format_for_arch
from slmforge.models.corpus import (
    build_corpus,
    is_heldout,
    split_corpus,
    stdlib_docstrings,
    summary_chats,
)


def test_the_split_is_disjoint_about_one_in_every_and_covers_the_corpus():
    fmt = format_for_arch("llama")
    train, heldout = split_corpus(fmt, 20)
    docs = stdlib_docstrings()
    held_docs = [doc for doc in docs if is_heldout(doc, 20)]
    assert 0.03 < len(held_docs) / len(docs) < 0.07
    assert set(held_docs) <= set(heldout) and not set(held_docs) & set(train)
    assert not set(train) & set(heldout)
    # every held-out docstring's chat is held out too: no chat in training asks about one
    asked = {chat[0]["content"] for chat in summary_chats(tuple(held_docs), None)}
    chats = [doc for doc in train if "Summarize in one line:" in doc]
    assert asked and chats and not any(question in chat for question in asked for chat in chats)
    assert set(docs) <= set(train) | set(heldout) and set(build_corpus(fmt)) >= set(docs)


def test_a_size_with_heldout_text_records_its_accuracy(tmp_path, monkeypatch):
    micro = replace(
        tiny.SIZES["tiny"],
        vocab=300,
        layers=1,
        hidden=32,
        heads=2,
        kv_heads=1,
        intermediate=64,
        pretrain_steps=3,
        batch=2,
        seq_len=32,
        corpus_chars=60_000,
        heldout_every=10,
    )
    monkeypatch.setitem(tiny.SIZES, "micro", micro)
    monkeypatch.setattr(tiny, "_HELDOUT_WINDOWS", 8)
    folder = tiny.build("llama", tmp_path / "model", size="micro")
    metrics = read_manifest(folder).metrics
    assert 0 <= metrics["heldout_accuracy"] <= 1 and metrics["heldout_loss"] > 0
    assert metrics["heldout_tokens"] == 8 * 32 and metrics["heldout_documents"] > 0
    assert read_manifest(folder).config["heldout_every"] == 10


def test_sizes_without_heldout_text_train_on_everything():
    assert tiny.SIZES["tiny"].heldout_every == 0 and tiny.SIZES["small"].heldout_every == 0
    assert tiny.SIZES["bench"].heldout_every > 0
