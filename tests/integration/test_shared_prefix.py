"""Shared openings (`train/shared_prefix.py`): a micro-batch's common opening runs once and
gives the plain forward's losses and adapter gradients, for every family; a fine-tuning run
uses it by default and trains exactly as without it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slmforge.artifacts import read_manifest
from slmforge.config.finetune import FinetuneConfig
from slmforge.models.chat import stop_strings
from slmforge.models.load import load_tokenizer
from slmforge.train import sft
from slmforge.train.collate import IGNORE, collate, encode
from slmforge.train.metrics import loss_and_hits, shifted_targets
from slmforge.train.objectives import model_logits
from slmforge.train.shared_prefix import shared_length

pytestmark = pytest.mark.integration

SYSTEM = (
    "You are a concise travel assistant for a small agency in Lisbon. Answer in two short "
    "sentences, name one real place, and never invent prices, opening hours or phone numbers."
)
QUESTIONS = [
    ("What's a must-see in Lisbon?", "The Alfama at dusk, from the Miradouro de Santa Luzia."),
    ("Where should I eat in Porto?", "Try a francesinha near the Bolhao market."),
    ("Is Madrid easy to walk?", "Yes: the centre is compact, from Sol to the Retiro park."),
    ("When is Seville at its best?", "In spring, when the orange trees of the Alcazar bloom."),
    ("What should I pack for the Azores?", "Layers and a rain jacket: the weather turns fast."),
    ("How do I get around Rome?", "On foot in the centre, and the metro for the Vatican."),
]


def _conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def _batch(model_dir: Path, count: int = 4):
    tokenizer = load_tokenizer(str(model_dir))
    stops = stop_strings(tokenizer)
    rows = [encode(tokenizer, _conversation(q, a), 256, stops=stops) for q, a in QUESTIONS]
    rows = rows[:count]
    batch = collate([[e] for e in rows], tokenizer.pad_token_id or 0, packed=False)
    targets = shifted_targets(batch["labels"])
    return rows, batch, targets, targets != IGNORE


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "mistral"])
def test_a_shared_opening_gives_the_plain_losses_and_gradients(tiny_model, arch) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    rows, batch, targets, keep = _batch(tiny_model(arch))
    length = shared_length([e.input_ids for e in rows], keep)
    assert length >= 22, "the system prompt should be shared"  # (4 - 1) x 22 >= 64
    assert not keep[:, :length].any()  # nothing scored where rows run once

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model(arch), dtype=torch.float32)
    config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    config.init_lora_weights = False  # B != 0, so gradients reach both adapter matrices
    model = get_peft_model(base, config)
    model.train()
    plan = SimpleNamespace(device="cpu", autocast_dtype=None, last_mlp=None)

    def run(shared: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model_logits(plan, model, batch, keep, shared)
        loss, _, count = loss_and_hits(logits, targets[keep])
        assert count == int(keep.sum())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    plain, plain_grads = run(0)
    shared, shared_grads = run(length)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        # summed in another order: equal to float rounding of the tensor's scale
        error = float((shared_grads[name] - grad).abs().max())
        assert error <= 1e-5 * float(grad.abs().max()) + 1e-7, (name, error)
    assert any(g.abs().sum() > 0 for g in shared_grads.values())

    with torch.no_grad():  # evaluation takes the same path without a graph
        model.eval()
        logits = model_logits(plan, model, batch, keep, length)
        assert torch.allclose(logits, model_logits(plan, model, batch, keep, 0), atol=1e-4)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _shared_and_plain(model: Path, data: Path, out: Path, **options):
    """Manifests of the same fp32 run with and without shared openings."""
    options = dict(model=str(model), data=data, lr=5e-3, log_every=1, samples=0, seed=3) | options
    options["precision"] = "fp32"
    shared = sft.finetune(FinetuneConfig(out=out / "on", **options))
    plain = sft.finetune(FinetuneConfig(out=out / "off", share_prefix=False, **options))
    return read_manifest(shared), read_manifest(plain)


def test_fine_tuning_shares_openings_by_default_and_trains_the_same(tiny_model, tmp_path):
    rows = [{"messages": _conversation(q, a)} for q, a in QUESTIONS * 3]
    data = _write_rows(tmp_path / "travel-system.jsonl", rows)
    shared, plain = _shared_and_plain(
        tiny_model("llama"), data, tmp_path, max_steps=4, batch_size=4
    )
    assert shared.details["share_prefix"] == "on"
    assert shared.details["last_layer_mlp"] == "kept positions"  # tests/.../test_kept_positions
    assert shared.details["shared_prefix_tokens_saved"] >= 4 * 3 * 22  # 4 steps x 3 rows
    assert plain.details["share_prefix"] == "off: --no-share-prefix"
    assert plain.details["shared_prefix_tokens_saved"] == 0
    # the first step sees the same weights: the same loss; later steps differ by float
    # rounding that Adam's first updates magnify (an entry of ~1e-5 can change sign)
    first, last = shared.metrics["train_loss_first"], shared.metrics["train_loss_last"]
    assert first == pytest.approx(plain.metrics["train_loss_first"], rel=1e-6)
    assert last == pytest.approx(plain.metrics["train_loss_last"], rel=1e-2)
    assert last < first


def test_packing_and_checkpointing_say_why_they_do_not_share(tiny_model, tmp_path):
    rows = [{"messages": _conversation(q, a)} for q, a in QUESTIONS * 2]
    data = _write_rows(tmp_path / "travel-system.jsonl", rows)
    common = dict(model=str(tiny_model("llama")), data=data, max_steps=1, batch_size=2)
    common |= dict(samples=0, max_seq_len=128)
    packed = sft.finetune(FinetuneConfig(out=tmp_path / "packed", packing=True, **common))
    assert read_manifest(packed).details["share_prefix"].startswith("off: --packing")
    checkpointed = sft.finetune(
        FinetuneConfig(out=tmp_path / "gc", gradient_checkpointing=True, **common)
    )
    details = read_manifest(checkpointed).details
    assert details["share_prefix"].startswith("off: gradient checkpointing")
    # the checkpointed layer is recomputed in backward: its MLP must see the same positions
    assert details["last_layer_mlp"] == "whole: gradient checkpointing"


def test_preference_pairs_share_their_opening_too(tiny_model, tmp_path):
    """Chosen and rejected answers open with the same system prompt and question: DPO's
    policy passes share it, with the plain first-step loss."""
    answers = [a for _, a in QUESTIONS]
    rows = [
        {
            "input": {"messages": _conversation(q, a)[:2]},
            "preferred_output": [{"role": "assistant", "content": a}],
            "non_preferred_output": [
                {"role": "assistant", "content": answers[(i + 1) % len(answers)]}
            ],
        }
        for i, (q, a) in enumerate(QUESTIONS * 2)
    ]
    shared, plain = _shared_and_plain(
        tiny_model("llama"),
        _write_rows(tmp_path / "pairs.jsonl", rows),
        tmp_path,
        objective="dpo",
        max_steps=3,
        batch_size=2,
    )
    assert shared.details["share_prefix"] == "on" and shared.details["objective"] == "dpo"
    assert shared.details["shared_prefix_tokens_saved"] >= 3 * 3 * 22  # 3 steps x 3 rows
    assert plain.details["shared_prefix_tokens_saved"] == 0
    assert shared.metrics["train_loss_first"] == pytest.approx(
        plain.metrics["train_loss_first"], rel=1e-6
    )
