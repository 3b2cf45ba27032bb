"""Single-stream decode speed: slmforge's ONNX engine vs PyTorch eager vs llama.cpp, same weights.

One prompt, `--tokens` greedy tokens (the end-of-text token does not stop the run, so every
variant decodes the same count), the same thread count everywhere (2: torch.set_num_threads,
ONNX Runtime's default of one thread per physical core, llama.cpp n_threads). Each variant runs
in its own process: a warm-up run, then `--runs` measured runs; the median is reported.

- `torch-fp32`: `TorchEngine` (transformers eager, KV cache) with slmforge's decode loop.
- `onnx-{fp32,int8,int4}`: `OnnxEngine` over `slmforge optimize` builds, same decode loop
  (its default CPU path: onnxruntime on `model.onnx`, cache bound in place,
  `runtime/onnx_batch.py`).
- `onnx-int4-genai`: the same int4 model with `OnnxEngine(decoder="genai")`: onnxruntime-genai's
  generator runs the forward passes (the engine's path for builds the direct one cannot run).
- `llama-{f32,q8_0,q4_0}`: llama-cpp-python on GGUF files converted from the same weights
  (`gguf_export.py`), `eval` + argmax, no sampling chain.

Time to first token is the prompt's prefill plus choosing the first token; decode tokens/s
counts the tokens after it. Run:

    .venv/bin/python benchmarks/decode_speed.py                       # every variant
    .venv/bin/python benchmarks/decode_speed.py --variants torch-fp32,onnx-int4,llama-q4_0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from itertools import islice

from bench_models import gguf_model, log, onnx_model, size_mib, small_model

VARIANTS = [
    "torch-fp32",
    "onnx-fp32",
    "onnx-int8",
    "onnx-int4",
    "onnx-int4-genai",
    "llama-f32",
    "llama-q8_0",
    "llama-q4_0",
]
THREADS = 2
PROMPT = (
    "Return a new list containing all items from the iterable in ascending order. A custom key "
    "function can be supplied to customize the sort order, and the reverse flag can be set to "
    "request the result in descending order."
)


def engine_run(engine, prompt: list[int], tokens: int) -> tuple[float, float]:
    """slmforge's own decode loop (`sampled_tokens` + the greedy `Sampler`), forced to `tokens`."""
    from slmforge.runtime.engine import GenParams
    from slmforge.runtime.sampling import Sampler, sampled_tokens

    with engine.session(None, len(prompt) + tokens) as forward:
        start = time.perf_counter()
        stream = sampled_tokens(forward, prompt, Sampler(GenParams(max_tokens=tokens)))
        next(stream)
        first = time.perf_counter()
        for _ in islice(stream, tokens - 1):
            pass
        return first - start, time.perf_counter() - first


def llama_run(llm, prompt: list[int], tokens: int) -> tuple[float, float]:
    import numpy as np

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    first = time.perf_counter()
    for _ in range(tokens - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return first - start, time.perf_counter() - first


def measure_one(variant: str, tokens: int, runs: int) -> dict:
    from slmforge.models.load import load_tokenizer

    model = small_model()
    prompt = load_tokenizer(model)(PROMPT)["input_ids"]
    kind, precision = variant.split("-", 1)
    if kind == "torch":
        import torch

        from slmforge.runtime.torch_engine import TorchEngine

        torch.set_num_threads(THREADS)
        engine, path = TorchEngine(str(model)), model
        run = lambda: engine_run(engine, prompt, tokens)  # noqa: E731
    elif kind == "onnx":
        from slmforge.runtime.onnx_engine import OnnxEngine

        genai = precision.endswith("-genai")
        path = onnx_model(precision.removesuffix("-genai"))
        engine = OnnxEngine(path, decoder="genai" if genai else "auto")
        run = lambda: engine_run(engine, prompt, tokens)  # noqa: E731
    else:
        import llama_cpp

        path = gguf_model(precision)
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=len(prompt) + tokens + 8,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            verbose=False,
        )
        run = lambda: llama_run(llm, prompt, tokens)  # noqa: E731
    run()  # warm-up
    results = [run() for _ in range(runs)]
    ttft = statistics.median(r[0] for r in results)
    decode = statistics.median(r[1] for r in results)
    return {
        "variant": variant,
        "prompt_tokens": len(prompt),
        "ttft_ms": ttft * 1000,
        "tokens_per_s": (tokens - 1) / decode,
        "size_mib": size_mib(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process measuring one variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.tokens, args.runs)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    small_model()
    results = {}
    for variant in variants:
        log(f"measuring {variant}")
        cmd = [sys.executable, __file__, "--one", variant, "--tokens", str(args.tokens)]
        out = subprocess.run(
            [*cmd, "--runs", str(args.runs)], check=True, capture_output=True, text=True
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    report(results, args.tokens)


def report(results: dict, tokens: int) -> None:
    first = next(iter(results.values()))
    prompt = first["prompt_tokens"]
    print(f"decode speed: {prompt}-token prompt, {tokens} greedy tokens, {THREADS} threads")
    columns = ("tokens/s", "TTFT ms", "size MiB", "vs torch", "vs q4_0")
    print(f"{'variant':<12} " + " ".join(f"{c:>9}" for c in columns))
    torch_rate = results.get("torch-fp32", {}).get("tokens_per_s")
    q4_rate = results.get("llama-q4_0", {}).get("tokens_per_s")
    for variant, r in results.items():
        vs_torch = f"{r['tokens_per_s'] / torch_rate:.2f}x" if torch_rate else "-"
        vs_q4 = f"{r['tokens_per_s'] / q4_rate:.2f}x" if q4_rate else "-"
        print(
            f"{variant:<12} {r['tokens_per_s']:>9.1f} {r['ttft_ms']:>9.1f} {r['size_mib']:>9.1f} "
            f"{vs_torch:>9} {vs_q4:>9}"
        )


if __name__ == "__main__":
    main()
