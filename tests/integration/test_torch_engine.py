"""TorchEngine streams, stops where it should, samples reproducibly and switches adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmforge.errors import InputError
from slmforge.runtime.engine import GenParams, complete
from slmforge.runtime.torch_engine import TorchEngine

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What's a must-see in Lisbon?"}]


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return TorchEngine(tiny_llama)


def test_streams_deltas_then_final_usage(engine: TorchEngine) -> None:
    deltas = list(engine.chat(ASK, GenParams(max_tokens=12)))
    *texts, final = deltas
    assert texts and all(d.text and d.finish_reason is None for d in texts)
    assert final.finish_reason in ("stop", "length") and final.timings is not None
    prompt = engine.tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert final.usage.prompt_tokens == len(
        engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    assert 0 < final.usage.completion_tokens <= 12


def test_tokens_without_text_are_timed(engine: TorchEngine, monkeypatch) -> None:
    # Random weights often pick ids past the tokenizer or special tokens: no text at all, yet
    # the time to first token and the decode rate are still measured.
    monkeypatch.setattr(engine, "stop_ids", set())
    monkeypatch.setattr(engine.tokenizer, "decode", lambda ids, **_: "")
    deltas = list(engine.chat(ASK, GenParams(max_tokens=6)))
    assert len(deltas) == 1
    final = deltas[0]
    assert final.usage.completion_tokens == 6
    assert final.timings.ttft_s is not None and 0 < final.timings.ttft_s < final.timings.total_s
    assert final.timings.tokens_per_s is not None and final.timings.inter_token_s is not None


def test_length_finish_has_exactly_max_tokens(engine: TorchEngine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "stop_ids", set())
    result = complete(engine, ASK, GenParams(max_tokens=7))
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 7


def test_stops_at_a_stop_token(engine: TorchEngine, monkeypatch) -> None:
    # The model's own end-of-turn and eos tokens are stop tokens.
    vocab = engine.tokenizer.get_vocab()
    assert {vocab["<|eot_id|>"], vocab["<|end_of_text|>"]} <= engine.stop_ids
    # Whichever token is a stop token ends the reply, counted but not shown.
    monkeypatch.setattr(engine, "stop_ids", set())
    first = complete(engine, ASK, GenParams(max_tokens=1))
    first_id = engine.tokenizer(first.text, add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr(engine, "stop_ids", {first_id})
    result = complete(engine, ASK, GenParams(max_tokens=10))
    assert result.finish_reason == "stop"
    assert result.text == "" and result.usage.completion_tokens == 1


def test_stop_strings_cut_the_output(engine: TorchEngine, monkeypatch) -> None:
    monkeypatch.setattr(engine, "stop_ids", set())
    full = complete(engine, ASK, GenParams(max_tokens=30)).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    result = complete(engine, ASK, GenParams(max_tokens=30, stop=[stop]))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index(stop)]


def test_greedy_is_deterministic_and_seed_reproduces_sampling(engine: TorchEngine) -> None:
    greedy = GenParams(max_tokens=15)
    assert complete(engine, ASK, greedy).text == complete(engine, ASK, greedy).text
    sampled = [
        complete(
            engine, ASK, GenParams(max_tokens=20, temperature=1.0, top_p=0.95, top_k=50, seed=seed)
        ).text
        for seed in (1, 1, 2, 3)
    ]
    assert sampled[0] == sampled[1]
    assert len(set(sampled[1:])) > 1


def test_unknown_adapter_is_an_input_error(engine: TorchEngine) -> None:
    with pytest.raises(InputError, match="unknown adapter 'x' \\(known: none loaded\\)"):
        engine.chat(ASK, GenParams(), adapter="x")
    assert engine.adapters() == []


def _random_lora(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from slmforge.models.load import load_causal_lm

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )  # random B: the adapter changes the output
    get_peft_model(load_causal_lm(base), config).save_pretrained(out)
    return out


def test_adapters_switch_per_request(tiny_llama: Path, engine: TorchEngine, tmp_path: Path) -> None:
    adapters = {
        "a": _random_lora(tiny_llama, tmp_path / "a", 1),
        "b": _random_lora(tiny_llama, tmp_path / "b", 2),
    }
    multi = TorchEngine(tiny_llama, adapters=adapters)
    assert multi.adapters() == ["a", "b"]
    params = GenParams(max_tokens=12)
    base = complete(engine, ASK, params).text
    with_a = complete(multi, ASK, params, adapter="a").text
    with_b = complete(multi, ASK, params, adapter="b").text
    assert len({base, with_a, with_b}) == 3
    # No adapter after one was active runs the plain base model again.
    assert complete(multi, ASK, params).text == base
    assert complete(multi, ASK, params, adapter="a").text == with_a
    with pytest.raises(InputError, match="known: a, b"):
        multi.chat(ASK, params, adapter="c")


def test_from_loaded_uses_the_model_in_memory(tiny_llama: Path, engine: TorchEngine) -> None:
    from slmforge.models.load import load_causal_lm, load_tokenizer

    loaded = TorchEngine.from_loaded(load_causal_lm(tiny_llama), load_tokenizer(tiny_llama))
    params = GenParams(max_tokens=10)
    assert complete(loaded, ASK, params).text == complete(engine, ASK, params).text
    assert loaded.adapters() == [] and loaded.stop_ids == engine.stop_ids
