"""`slmforge optimize --compare` without building anything: the options (config/optimize.py)
and the ladder's own pieces (optimize/compare.py): rows, the KL/perplexity arithmetic, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from pydantic import ValidationError

from slmforge.config.optimize import OptimizeConfig
from slmforge.errors import InputError
from slmforge.optimize import compare
from slmforge.optimize.compare import Variant


class _Tokenizer:
    """A chat template that renders each message, and one token per character."""

    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 128 for c in text]}


def _cfg(**values) -> OptimizeConfig:
    base = {"model": "m", "out": "o", "eval_data": "eval.jsonl"}
    return OptimizeConfig(**(base | values))


@pytest.mark.parametrize(
    "given",
    [["rtn,gptq,int8"], ["rtn", "gptq", "int8"], ["rtn, gptq", "int8"], "rtn,gptq,int8"],
)
def test_compare_takes_commas_or_repeats(given):
    cfg = _cfg(compare=given, calibration_data="cal.jsonl")
    assert cfg.compare == ["rtn", "gptq", "int8"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"compare": ["rtn,q4_k"]}, "unknown entry 'q4_k'"),
        ({"compare": ["rtn,rtn"]}, "entries must be unique"),
        ({"compare": ["rtn"], "eval_data": None}, "--compare needs --eval-data"),
        ({"compare": ["rtn,gptq"]}, "--compare gptq needs --calibration-data"),
        ({"compare": ["awq"]}, "--compare awq needs --calibration-data"),
        ({"compare": ["rtn"], "format": "gguf"}, "drop --format gguf"),
        ({"compare": ["rtn"], "adapter": ["a"]}, "drop --adapter"),
    ],
)
def test_bad_ladders_are_rejected_with_one_message(values, message):
    with pytest.raises(ValidationError, match=message):
        _cfg(**values)


def test_each_entry_becomes_one_ordinary_build():
    cfg = _cfg(compare=["k_quant,gptq,int8,fp32"], calibration_data="cal.jsonl", max_length=256)
    gptq = cfg.variant("gptq", Path("o/gptq"))
    assert (gptq.precision, gptq.int4_algo, gptq.out) == ("int4", "gptq", Path("o/gptq"))
    assert gptq.calibration_data == Path("cal.jsonl") and gptq.max_length == 256
    assert gptq.compare == [] and gptq.eval_data is None  # no ladder inside the ladder
    assert (
        cfg.variant("k_quant", Path("x")).int4_algo,
        cfg.variant("int8", Path("x")).precision,
    ) == (
        "k_quant",
        "int8",
    )
    fp32 = cfg.variant("fp32", Path("x"))
    assert (fp32.precision, fp32.int4_algo) == ("fp32", "default")


def test_eval_rows_are_rendered_cut_and_limited(tmp_path):
    data = tmp_path / "eval.jsonl"
    rows = [{"prompt": f"question {i}", "response": "answer " * 30} for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ids = compare.eval_rows(data, _Tokenizer(), limit=3, seq_len=40)
    assert len(ids) == 3 and all(len(row) == 40 for row in ids)
    assert "".join(chr(t) for t in ids[0]).startswith("<user>question 0")


def test_eval_rows_without_text_or_template_fail(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.jsonl: file is empty"):
        compare.eval_rows(empty, _Tokenizer(), 4, 64)
    with pytest.raises(InputError, match=r"missing\.jsonl"):
        compare.eval_rows(tmp_path / "missing.jsonl", _Tokenizer(), 4, 64)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n", encoding="utf-8")
    plain = _Tokenizer()
    plain.chat_template = None
    with pytest.raises(InputError, match="chat template"):
        compare.eval_rows(data, plain, 4, 64)


def test_log_softmax_is_a_distribution():
    logits = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32) * 30
    probs = np.exp(compare.log_softmax(logits))
    assert np.allclose(probs.sum(-1), 1, atol=1e-5)
    assert (probs.argmax(-1) == logits.argmax(-1)).all()


class _Engine:
    """An ONNX engine stand-in whose logits are the source's plus a fixed offset."""

    max_length = 64

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def logits(self, ids):
        return _source_logits(ids) + self.shift * np.eye(len(ids), 5, k=1)


def _source_logits(ids: list[int]) -> np.ndarray:
    return np.log(np.linspace(1, 2, 5))[None, :].repeat(len(ids), 0) + np.eye(len(ids), 5)


def _reference(tmp_path: Path, rows: list[list[int]]) -> compare.Reference:
    """A source whose hidden states are its logits and whose LM head is the identity."""
    nll, positions = 0.0, 0
    np.save(tmp_path / "head.npy", np.eye(5, dtype=np.float32))
    for k, ids in enumerate(rows):
        logits = _source_logits(ids)[:-1].astype(np.float32)
        np.save(tmp_path / f"row{k}.npy", logits)
        log_p = compare.log_softmax(logits)
        nll -= float(log_p[np.arange(len(ids) - 1), ids[1:]].sum())
        positions += len(ids) - 1
    return compare.Reference(rows, tmp_path, math.exp(nll / positions), positions)


def test_measure_is_zero_for_a_copy_and_grows_with_the_error(tmp_path, monkeypatch):
    reference = _reference(tmp_path, [[0, 1, 2, 3], [4, 0, 1]])
    figures = {}
    for shift in (0.0, 0.5, 3.0):
        monkeypatch.setattr(
            "slmforge.runtime.onnx_engine.OnnxEngine", lambda folder, s=shift: _Engine(s)
        )
        monkeypatch.setattr(compare, "decode_speed", lambda engine, prompt: 10.0)
        figures[shift] = compare.measure(tmp_path, reference)
    assert figures[0.0]["kl"] == pytest.approx(0, abs=1e-7)
    assert figures[0.0]["agreement"] == 1.0
    assert figures[0.0]["ppl"] == pytest.approx(reference.ppl)
    assert 0 < figures[0.5]["kl"] < figures[3.0]["kl"]
    assert figures[3.0]["agreement"] < 1.0


def test_streamed_measurement_equals_the_whole_log_probs(tmp_path, monkeypatch):
    """The source pass keeps hidden states and the LM head, not log-probs: the figures are
    the ones computed from whole [positions, vocab] log-probs held in memory, and the scratch
    folder holds nothing vocabulary-sized per row."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(compare, "POSITION_CHUNK", 7)  # rows span several chunks
    monkeypatch.setattr(  # no tokenizer needed: the rows are token ids already
        "slmforge.models.load.load_causal_lm",
        lambda path, dtype, trust_remote_code: AutoModelForCausalLM.from_pretrained(path),
    )
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 300, size=n).tolist() for n in (20, 9, 33)]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reference = compare.source_pass(tmp_path / "model", rows, scratch, False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    with torch.inference_mode():
        whole = [model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in rows]
    noise = {len(ids): rng.normal(0, 0.3, size=(len(ids), 300)) for ids in rows}

    def variant(ids: list[int]) -> np.ndarray:
        return whole[[len(r) for r in rows].index(len(ids))] + noise[len(ids)]

    kl = nll = nll_source = agree = 0.0
    for ids, logits in zip(rows, whole, strict=True):
        log_p = compare.log_softmax(logits[:-1].astype(np.float64))
        log_q = compare.log_softmax(variant(ids)[:-1].astype(np.float64))
        kl += float((np.exp(log_p) * (log_p - log_q)).sum())
        agree += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
        nll -= float(log_q[np.arange(len(ids) - 1), ids[1:]].sum())
        nll_source -= float(log_p[np.arange(len(ids) - 1), ids[1:]].sum())
    positions = sum(len(ids) - 1 for ids in rows)
    figures = compare.score(variant, reference)
    assert reference.positions == positions
    assert reference.ppl == pytest.approx(math.exp(nll_source / positions), rel=1e-5)
    assert figures["kl"] == pytest.approx(kl / positions, rel=1e-4)
    assert figures["agreement"] == agree / positions
    assert figures["ppl"] == pytest.approx(math.exp(nll / positions), rel=1e-5)
    sizes = {f.name: np.load(f, mmap_mode="r").shape for f in scratch.glob("row*.npy")}
    assert sizes == {f"row{k}.npy": (len(ids) - 1, 32) for k, ids in enumerate(rows)}


def _variants() -> list[Variant]:
    return [
        Variant("rtn", "int4", "rtn", 0.02, 11.0, 10.0, 0.9, 1_800_000, 3.0, 400.0),
        Variant("int8", "int8", "default", 1e-4, 10.01, 10.0, 0.99, 2_200_000, 2.0, 300.0),
    ]


def test_reports_have_the_table_and_a_valid_chart():
    variants = _variants()
    report = {
        "model": "/m",
        "eval_data": "eval.jsonl",
        "rows": 3,
        "positions": 90,
        "scoring": "whole text",
        "ppl_source": 10.0,
        "variants": {v.name: compare.asdict(v) for v in variants},
    }
    text = compare.markdown(report, variants)
    assert "| rtn (int4) | 0.02 | 11.000 | 10.000 | 90.0% | 1.80 MB | 3.0 s | 400.0 |" in text
    assert "| int8 | 0.0001 |" in text and "](compare.svg)" in text
    svg = ElementTree.fromstring(compare.chart(variants))
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) == 4  # KL and size per variant
    assert compare.variants_of(report) == variants
