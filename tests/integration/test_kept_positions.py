"""Kept positions (`train/kept_positions.py`): a training forward drops the columns after the
last scored one and runs the last layer's MLP at the scored positions only, with the full
forward's losses and gradients, for every family, alone and under a shared opening."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slmforge.models.chat import stop_strings
from slmforge.models.load import load_tokenizer
from slmforge.train.collate import IGNORE, collate, encode
from slmforge.train.kept_positions import last_layer_mlp, trim_columns
from slmforge.train.metrics import loss_and_hits, shifted_targets
from slmforge.train.objectives import model_logits
from slmforge.train.shared_prefix import shared_length

pytestmark = pytest.mark.integration

SYSTEM = "You are a travel assistant for a small agency in Lisbon; answer in one short sentence."
QUESTIONS = [
    ("What's a must-see in Lisbon?", "The Alfama at dusk."),
    ("Where should I eat in Porto, near the river?", "Try a francesinha near the Bolhao market."),
    ("Is Madrid easy to walk?", "Yes: the centre is compact."),
    ("When is Seville best?", "In spring, when the orange trees of the Alcazar bloom."),
]


def _batch(model_dir: Path):
    tokenizer = load_tokenizer(str(model_dir))
    stops = stop_strings(tokenizer)
    rows = [
        encode(
            tokenizer,
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ],
            256,
            stops=stops,
        )
        for q, a in QUESTIONS
    ]
    batch = collate([[e] for e in rows], tokenizer.pad_token_id or 0, packed=False)
    targets = shifted_targets(batch["labels"])
    return rows, batch, targets, targets != IGNORE


def _lora(model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
    config.init_lora_weights = False  # B != 0: the last MLP's adapters get gradients too
    model = get_peft_model(base, config)
    model.train()
    return model


def _rows_through(module: torch.nn.Module) -> list[int]:
    """Positions (of all rows) each call of `module` sees."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _, a: seen.append(a[0].numel() // a[0].shape[-1]))
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "mistral"])
def test_kept_positions_give_the_full_forwards_losses_and_gradients(tiny_model, arch) -> None:
    rows, batch, targets, keep = _batch(tiny_model(arch))
    model = _lora(tiny_model(arch))
    last_mlp, why = last_layer_mlp(model, checkpointing=False, select_logits=True)
    assert last_mlp is not None, why
    down = _rows_through(model.get_base_model().get_decoder().layers[-1].mlp.down_proj)
    first = _rows_through(model.get_base_model().get_decoder().layers[0])
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def backward(logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, _, count = loss_and_hits(logits, targets[keep])
        assert count == int(keep.sum())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    # the full forward: every column, the whole MLP (outside `only` the wrapper stays out)
    full, full_grads = backward(model(**inputs, use_cache=False, logits_to_keep=keep).logits)
    assert down[-1] == first[-1] == keep.numel()
    plan = SimpleNamespace(device="cpu", autocast_dtype=None, last_mlp=last_mlp)
    width = int(keep.any(0).nonzero()[-1]) + 1
    assert width < keep.size(1)  # the longest row's final token predicts nothing
    length = shared_length([e.input_ids for e in rows], keep)
    assert length > 0, "the system prompt should be shared"
    for shared in (0, length):
        kept, kept_grads = backward(model_logits(plan, model, batch, keep, shared))
        torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-5)
        assert kept_grads.keys() == full_grads.keys()
        for name, grad in full_grads.items():
            error = float((kept_grads[name] - grad).abs().max())
            assert error <= 1e-5 * float(grad.abs().max()) + 1e-7, (name, shared, error)
        assert down[-1] == int(keep.sum())  # the last MLP ran at the scored positions only
        assert first[-1] == keep.size(0) * (width - shared)  # no layer saw columns after them
    assert down[-2] == 0  # a shared opening keeps no logits: its last MLP ran on nothing
    last_mlp_grads = [g for n, g in full_grads.items() if ".layers.1.mlp." in n]
    assert last_mlp_grads and all(g.abs().sum() > 0 for g in last_mlp_grads)


def test_trim_columns_keeps_everything_up_to_the_last_kept_column() -> None:
    keep = torch.tensor([[False, True, False, False, False], [False, False, True, False, False]])
    inputs = {
        "input_ids": torch.arange(10).view(2, 5),
        "position_ids": torch.arange(5).repeat(2, 1),
    }
    trimmed, kept = trim_columns(inputs, keep)
    assert kept.tolist() == keep[:, :3].tolist()
    assert trimmed["input_ids"].tolist() == [[0, 1, 2], [5, 6, 7]]
    assert trimmed["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    nothing = torch.zeros(2, 5, dtype=torch.bool)  # nothing kept: nothing to trim by
    assert trim_columns(inputs, nothing)[0] is inputs
