"""slmforge's GGUF export against its ONNX int4 build of the same model (issue 24): size, KL
from PyTorch, and one-stream decode speed.

Both are built with the CLI exactly as a user runs it, from the `small` Llama
(`bench_models.small_model`), each verified on the same 8 default prompts: the KL and confident
agreement are the builds' own verification figures (`slmforge.json`: ONNX through ONNX Runtime,
GGUF through its dequantized read-back), so both are measured against the same PyTorch
reference. Decode: 64 greedy tokens after a short prompt, one stream, 2 threads, warm-up first;
ONNX through `OnnxEngine` and GGUF through `LlamaCppEngine` (both under slmforge's sampler), and
llama.cpp's own `Llama.generate` loop for reference. GGUF decode needs llama-cpp-python (the
`llamacpp` extra); without it only size and KL are reported.

    .venv/bin/python benchmarks/gguf_vs_onnx.py
    .venv/bin/python benchmarks/gguf_vs_onnx.py --gguf-precision q8_0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import time
from pathlib import Path

from bench_models import CACHE, NAME, log, onnx_model, slmforge_command, small_model

PROMPT = [{"role": "user", "content": "How is the configuration file read at start-up?"}]
TOKENS = 64


def gguf_folder(precision: str) -> Path:
    folder = CACHE / f"{NAME}-gguf-{precision}"
    if not (folder / "slmforge.json").is_file():
        command = [
            slmforge_command(),
            "--log-format",
            "plain",
            "optimize",
            "--model",
            str(small_model()),
            "--format",
            "gguf",
            "--precision",
            precision,
            "--verify-prompts",
            "8",
            "--out",
            str(folder),
            "--force",
        ]
        log("running " + " ".join(command))
        subprocess.run(command, check=True)
    return folder


def figures(folder: Path) -> dict:
    manifest = json.loads((folder / "slmforge.json").read_text())
    parity = manifest["metrics"]["parity"]["base"]
    size = sum(
        p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".data", ".gguf")
    )
    return {
        "size_mib": size / 2**20,
        "kl": parity["kl"],
        "agreement": parity["confident_agreement"],
    }


def tokens_per_s(engine) -> float:
    prompt = engine.prompt_ids(PROMPT)
    for _ in range(2):  # warm-up, then the measured run
        with engine.session(None, len(prompt) + TOKENS) as forward:
            logits = forward(prompt)
            start = time.perf_counter()
            for _ in range(TOKENS):
                logits = forward([int(logits.argmax())])
            elapsed = time.perf_counter() - start
    return TOKENS / elapsed


def llama_cpp_own(folder: Path) -> float:
    import llama_cpp

    from slmforge.runtime.llamacpp_engine import gguf_files

    llm = llama_cpp.Llama(str(gguf_files(folder)[0]), n_ctx=512, n_threads=2, verbose=False)
    ids = llm.tokenize(b"How is the configuration file read at start-up?")
    for _ in range(2):
        llm.reset()
        start = time.perf_counter()
        for count, _token in enumerate(llm.generate(ids, temp=0.0), start=1):
            if count == 1:
                start = time.perf_counter()  # decode only, as above
            if count > TOKENS:
                break
        elapsed = time.perf_counter() - start
    return TOKENS / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf-precision", default="q4_0")
    args = parser.parse_args()
    onnx, gguf = onnx_model("int4"), gguf_folder(args.gguf_precision)
    rows = {"onnx int4": figures(onnx), f"gguf {args.gguf_precision}": figures(gguf)}
    from slmforge.runtime.onnx_engine import OnnxEngine

    rows["onnx int4"]["tokens_per_s"] = tokens_per_s(OnnxEngine(onnx))
    if importlib.util.find_spec("llama_cpp") is not None:
        from slmforge.runtime.llamacpp_engine import LlamaCppEngine

        rows[f"gguf {args.gguf_precision}"]["tokens_per_s"] = tokens_per_s(
            LlamaCppEngine(gguf, threads=2)
        )
        rows[f"gguf {args.gguf_precision}"]["llama.cpp own loop tokens/s"] = llama_cpp_own(gguf)
    print(f"model {NAME}; decode {TOKENS} greedy tokens, one stream")
    for name, row in rows.items():
        shown = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
        )
        print(f"{name}: {shown}")


if __name__ == "__main__":
    main()
