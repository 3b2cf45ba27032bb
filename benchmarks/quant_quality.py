"""Quantization quality on the reference model (issue 21): int4 round-to-nearest against GPTQ,
AWQ and k-quant, int8, and llama.cpp's Q4_0 / Q4_K_M, by KL divergence from the fp32 model.

The reference model is the `bench` Llama (`bench_models.reference_model`): pretrained with 1 in
20 standard-library docstrings held out, its manifest records its next-token accuracy on them.
The ladder is the CLI exactly as a user runs it:

    slmforge optimize --model REF --compare default,rtn,k_quant,gptq,awq,int8 \
        --eval-data heldout.jsonl --calibration-data training.jsonl --out OUT

with the held-out docstrings' chats as the measured text and chats of the training docstrings
as calibration prompts (`bench_models.reference_data`). `default` is ONNX Runtime's MLAS
round-to-nearest, on the very grid GPTQ and AWQ write (so the same block size and file size);
`rtn` is the builder's neural-compressor RTN. Where llama-cpp-python imports (a local build:
`PYTHONPATH=/tmp/llcpp`), the model is also exported with `optimize --format gguf --precision
q4_0|q4_k_m` and scored by llama.cpp on the same rows against the same PyTorch reference
(`slmforge.optimize.compare.score`).

Prints the table, the ratios the acceptance names (KL of GPTQ and AWQ over KL of
round-to-nearest; best int4 perplexity over the fp32 one), and writes them to
`.cache/bench/quant-quality.json`.

    nice -n 10 .venv/bin/python benchmarks/quant_quality.py
    PYTHONPATH=/tmp/llcpp nice -n 10 .venv/bin/python benchmarks/quant_quality.py --rows 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
from functools import partial
from pathlib import Path

from bench_models import CACHE, REFERENCE, log, reference_data, reference_model, slmforge_command

LADDER = ("default", "rtn", "k_quant", "gptq", "awq", "int8")
ROUND_TO_NEAREST = ("default", "rtn")
CALIBRATED = ("gptq", "awq")
INT4 = ("default", "rtn", "k_quant", "gptq", "awq")
GGUF = ("q4_0", "q4_k_m")


def cli(*args: str) -> None:
    command = [slmforge_command(), "--log-format", "plain", *args]
    log("running " + " ".join(command))
    subprocess.run(command, check=True)


def ladder(model: Path, data: dict[str, Path], out: Path, options: list[str]) -> dict:
    cli(
        "optimize",
        "--model",
        str(model),
        "--compare",
        ",".join(LADDER),
        "--eval-data",
        str(data["eval"]),
        "--calibration-data",
        str(data["calibration"]),
        *options,
        "--out",
        str(out),
        "--force",
    )
    return json.loads((out / "compare.json").read_text(encoding="utf-8"))


def llama_cpp_kl(model: Path, data: dict[str, Path], rows: int, seq_len: int) -> dict | None:
    """KL, agreement and perplexity of llama.cpp's Q4_0 and Q4_K_M builds on the ladder's rows,
    or None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        log("llama-cpp-python is not importable: no llama.cpp figures")
        return None
    from slmforge.models.load import load_tokenizer
    from slmforge.optimize import compare
    from slmforge.runtime.llamacpp_engine import LlamaCppEngine

    token_rows = compare.eval_rows(data["eval"], load_tokenizer(model), rows, seq_len)
    results = {}
    with tempfile.TemporaryDirectory(prefix="quant-quality-") as scratch:
        reference = compare.source_pass(model, token_rows, Path(scratch), False)
        for precision in GGUF:
            folder = CACHE / f"{REFERENCE}-gguf-{precision}"
            if not (folder / "slmforge.json").is_file():
                cli("optimize", "--model", str(model), "--format", "gguf", "--precision",
                    precision, "--out", str(folder), "--force")  # fmt: skip
            engine = LlamaCppEngine(folder, threads=2)
            figures = compare.score(partial(engine.sequence_logits, adapter=None), reference)
            figures["size_bytes"] = sum(f.stat().st_size for f in folder.glob("*.gguf"))
            results[precision] = figures | {"ppl_source": reference.ppl}
    return results


def onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("model.onnx*"))


def ratios(report: dict, gguf: dict | None, out: Path) -> dict:
    variants = report["variants"]
    kl = {name: v["kl"] for name, v in variants.items()}
    figures = {
        f"kl_{algo}_over_{rtn}": kl[algo] / kl[rtn]
        for algo in CALIBRATED
        for rtn in ROUND_TO_NEAREST
        if kl[rtn] > 0
    }
    best = min(INT4, key=lambda name: variants[name]["ppl"])
    figures["best_int4"] = best
    figures["best_int4_ppl_over_fp32"] = variants[best]["ppl"] / report["ppl_source"]
    sizes = {name: onnx_bytes(out / name) for name in ("default", *CALIBRATED)}
    figures["same_model_file_size"] = len(set(sizes.values())) == 1
    if gguf:
        for name in gguf:
            figures[f"kl_llamacpp_{name}_over_default"] = gguf[name]["kl"] / kl["default"]
    return figures


def table(report: dict, gguf: dict | None) -> str:
    head = "| variant | KL | ppl | ppl fp32 | top-1 agree | size | build | decode tok/s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in report["variants"].items():
        lines.append(
            f"| {name} ({v['precision']}) | {v['kl']:.3g} | {v['ppl']:.3f} | "
            f"{v['ppl_source']:.3f} | {v['agreement']:.1%} | {v['size_bytes'] / 1e6:.2f} MB | "
            f"{v['build_s']:.1f} s | {v['tokens_per_s']:.0f} |"
        )
    for name, v in (gguf or {}).items():
        lines.append(
            f"| llama.cpp {name} | {v['kl']:.3g} | {v['ppl']:.3f} | {v['ppl_source']:.3f} | "
            f"{v['agreement']:.1%} | {v['size_bytes'] / 1e6:.2f} MB | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=128, help="held-out rows measured")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row at most")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--calibration-seq-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=CACHE / f"{REFERENCE}-ladder")
    parser.add_argument(
        "--reuse-ladder", action="store_true", help="read OUT/compare.json if it is there"
    )
    args = parser.parse_args()
    model = reference_model()
    manifest = json.loads((model / "slmforge.json").read_text(encoding="utf-8"))
    data = reference_data()
    options = ["--eval-rows", str(args.rows), "--eval-seq-len", str(args.seq_len)]
    options += ["--calibration-samples", str(args.calibration_samples)]
    options += ["--calibration-seq-len", str(args.calibration_seq_len)]
    if args.reuse_ladder and (args.out / "compare.json").is_file():
        report = json.loads((args.out / "compare.json").read_text(encoding="utf-8"))
    else:
        report = ladder(model, data, args.out, options)
    gguf = llama_cpp_kl(model, data, args.rows, args.seq_len)
    figures = ratios(report, gguf, args.out)
    result = {
        "model": str(model),
        "model_metrics": manifest["metrics"],
        "command": " ".join(["slmforge optimize", "--compare", ",".join(LADDER), *options]),
        "rows": report["rows"],
        "positions": report["positions"],
        "ladder": report["variants"],
        "llama_cpp": gguf,
        "ratios": figures,
    }
    (CACHE / "quant-quality.json").write_text(json.dumps(result, indent=2) + "\n")
    metrics = manifest["metrics"]
    print(
        f"reference model: {metrics['parameters'] / 1e6:.1f}M parameters, held-out next-token "
        f"accuracy {metrics['heldout_accuracy']:.1%} on {metrics['heldout_tokens']} tokens"
    )
    print(f"measured on {report['rows']} held-out rows, {report['positions']} positions\n")
    print(table(report, gguf))
    print()
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
