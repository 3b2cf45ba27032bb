"""What constrained decoding costs per token (issue 22): llguidance's mask and the masked draw of
slmforge's `Sampler`, against the same sampler unconstrained, on the `small` model's tokenizer
and, where it is built, a tokenizer with Qwen2.5's 151,936-token vocabulary
(`slmforge models init --like qwen2.5-0.5b`).

Logits are random (the worst case for the grammar: every step explores), drawn at temperature
1 with a seed; a reply ends when the grammar completes or after `--tokens` tokens. Prints the
mean and p95 microseconds per token of each, and the overhead as a share of one int4 decode
step measured on the small model's ONNX build in the same run.

    .venv/bin/python benchmarks/grammar_overhead.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_models import CACHE, onnx_model, small_model

from slmforge.runtime.engine import GenParams
from slmforge.runtime.grammar import GrammarConstraint, grammar_for, grammar_tokenizer
from slmforge.runtime.sampling import Sampler

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "season": {"enum": ["spring", "summer", "autumn", "winter"]},
        "nights": {"type": "integer", "minimum": 1, "maximum": 30},
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
    },
    "required": ["city", "season", "nights", "sights"],
    "additionalProperties": False,
}


def per_token_us(tokenizer, constrained: bool, tokens: int, seed: int) -> list[float]:
    params = GenParams(temperature=1.0, seed=seed, json_schema={"name": "t", "schema": SCHEMA})
    end = tokenizer.eos_token_id or 0
    times: list[float] = []
    rng = np.random.default_rng(seed)
    while len(times) < tokens:
        constraint = None
        if constrained:
            wrapped = grammar_tokenizer(tokenizer, len(tokenizer), [end])
            constraint = GrammarConstraint(wrapped, grammar_for(params))
        sampler = Sampler(params, constraint)
        for _ in range(tokens):
            logits = rng.normal(size=len(tokenizer)).astype(np.float32)
            start = time.perf_counter()
            sampled = sampler.pick(logits)
            times.append((time.perf_counter() - start) * 1e6)
            if sampled.ends or sampled.token_id == end:
                break
    return times


def decode_step_us(folder: Path) -> float:
    from slmforge.runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine(folder)
    prompt = engine.encode("The file is opened and")
    with engine.session(None, 256) as forward:
        forward(prompt)
        start = time.perf_counter()
        for token in range(50):
            forward([token + 10])
        return (time.perf_counter() - start) / 50 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument(
        "--onnx", type=Path, help="ONNX folder for the decode step (default: small int4)"
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        action="append",
        default=[],
        help="Tokenizer folder to measure (default: the small model's)",
    )
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizers = {str(t): t for t in args.tokenizer} or {"small": small_model()}
    qwen = CACHE / "real-size" / "qwen2.5-0.5b"
    if (Path(qwen) / "tokenizer.json").is_file():
        tokenizers["qwen2.5-0.5b shape"] = qwen
    onnx = args.onnx or onnx_model("int4")
    step = decode_step_us(onnx)
    print(f"decode step of {onnx.name} (2 threads): {step:.0f} us")
    for name, folder in tokenizers.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        plain = per_token_us(tokenizer, False, args.tokens, 1)
        grammar = per_token_us(tokenizer, True, args.tokens, 1)
        extra = np.mean(grammar) - np.mean(plain)
        print(
            f"{name} (vocabulary {len(tokenizer)}): sampler {np.mean(plain):.0f} us/token "
            f"(p95 {np.percentile(plain, 95):.0f}), with the JSON-schema grammar "
            f"{np.mean(grammar):.0f} us/token (p95 {np.percentile(grammar, 95):.0f}): "
            f"+{extra:.0f} us = {extra / step:.1%} of a decode step"
        )


if __name__ == "__main__":
    main()
