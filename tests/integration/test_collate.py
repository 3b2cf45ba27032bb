"""Assistant-only labels token by token for each chat format, multi-turn data, and packing."""

from __future__ import annotations

import pytest
import torch

from slmforge.models.chat import stop_strings
from slmforge.models.load import load_causal_lm, load_tokenizer
from slmforge.train.collate import IGNORE, collate, encode, pack

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful travel assistant."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What's a must-see in Lisbon?"},
    {"role": "assistant", "content": "Ride tram 28 up to the castle."},
    {"role": "user", "content": "And to eat?"},
    {"role": "assistant", "content": "Pastel de nata in Belem."},
]
# What the labels must cover, per format: each answer plus its end-of-turn markers.
TRAINED = {
    "phi3": [
        "Ride tram 28 up to the castle.<|end|>",
        "Pastel de nata in Belem.<|end|>\n<|endoftext|>",
    ],
    "qwen2": ["Ride tram 28 up to the castle.<|im_end|>", "Pastel de nata in Belem.<|im_end|>"],
    "llama": ["Ride tram 28 up to the castle.<|eot_id|>", "Pastel de nata in Belem.<|eot_id|>"],
    "mistral": [" Ride tram 28 up to the castle.</s>", " Pastel de nata in Belem.</s>"],
}


def _trained_runs(tokenizer, encoded) -> list[str]:
    """Decode each maximal run of labeled tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


@pytest.mark.parametrize("arch", ["phi3", "qwen2", "llama", "mistral"])
def test_only_assistant_turns_are_trained(tiny_model, arch):
    tokenizer = load_tokenizer(tiny_model(arch))
    encoded = encode(tokenizer, CONVERSATION, 4096, stops=stop_strings(tokenizer))
    assert _trained_runs(tokenizer, encoded) == TRAINED[arch]
    untrained = tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE]
    )
    assert SYSTEM in untrained and "must-see in Lisbon" in untrained and "And to eat?" in untrained
    assert "tram" not in untrained and "nata" not in untrained


@pytest.mark.parametrize("arch", ["phi3", "llama"])
def test_train_on_prompt_labels_everything(tiny_model, arch):
    tokenizer = load_tokenizer(tiny_model(arch))
    encoded = encode(tokenizer, CONVERSATION, 4096, train_on_prompt=True)
    assert encoded.labels == encoded.input_ids


def test_text_template_trains_the_response_and_closing_marker(tiny_model):
    tokenizer = load_tokenizer(tiny_model("phi3"))
    template = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
    messages = CONVERSATION[1:3]
    encoded = encode(tokenizer, messages, 4096, text_template=template)
    assert _trained_runs(tokenizer, encoded) == ["Ride tram 28 up to the castle.<|end|>"]


def test_truncation_keeps_the_prefix(tiny_model):
    tokenizer = load_tokenizer(tiny_model("phi3"))
    full = encode(tokenizer, CONVERSATION, 4096, stops=stop_strings(tokenizer))
    cut = encode(tokenizer, CONVERSATION, 20, stops=stop_strings(tokenizer))
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_packed_examples_do_not_see_each_other(tiny_model):
    """Logits of a packed row equal the logits of each example run on its own."""
    folder = tiny_model("llama")
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder)
    stops = stop_strings(tokenizer)
    examples = [
        encode(tokenizer, CONVERSATION[:3], 512, stops=stops),
        encode(tokenizer, CONVERSATION[:1] + CONVERSATION[3:], 512, stops=stops),
    ]
    bins = pack(examples, 512)
    assert len(bins) == 1
    batch = collate(bins, pad_id=0, packed=True)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        offset = 0
        for example in bins[0]:
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            part = packed[offset : offset + len(example.input_ids)]
            assert torch.allclose(part, alone, atol=1e-4), (part - alone).abs().max()
            offset += len(example.input_ids)


def test_pack_respects_the_row_length():
    from slmforge.train.collate import Encoded

    examples = [Encoded([1] * n, [1] * n) for n in (60, 50, 40, 30, 20, 10)]
    bins = pack(examples, 100)
    assert all(sum(len(e.input_ids) for e in row) <= 100 for row in bins)
    assert sorted(len(e.input_ids) for row in bins for e in row) == [10, 20, 30, 40, 50, 60]
    assert len(bins) == 3


def test_length_grouped_order_pads_less_and_is_a_pure_function_of_seed_and_epoch():
    import random

    from slmforge.train.collate import epoch_order, length_grouped_order

    lengths = [random.Random(i).randint(10, 500) for i in range(403)]
    order = length_grouped_order(lengths, seed=7, epoch=2, per_step=8)
    assert sorted(order) == list(range(403))
    assert order == length_grouped_order(lengths, seed=7, epoch=2, per_step=8)
    assert order != length_grouped_order(lengths, seed=7, epoch=3, per_step=8)
    assert lengths[order[0]] == max(lengths)  # the largest step comes first

    def padded(order: list[int]) -> int:
        batches = [order[i : i + 4] for i in range(0, len(order) - 3, 4)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(order) < 0.7 * padded(epoch_order(403, 7, 2))
    # sorting stays inside mega-batches (here 12 steps of 8 rows) of the epoch's shuffle; only
    # the longest row of all trades places with the first one
    shuffled, size = epoch_order(403, 7, 2), 96
    moved = [
        len(set(order[s : s + size]) ^ set(shuffled[s : s + size])) for s in range(0, 403, size)
    ]
    assert sum(moved) <= 4
