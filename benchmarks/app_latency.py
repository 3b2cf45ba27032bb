"""What the app's two panes show, measured: time to first token and tokens/s of the local int4
ONNX model vs the served cloud stand-in, for the same prompts.

- local: the `small` Llama as int4 ONNX (`bench_models.onnx_model("int4")`), an `OnnxEngine`
  in this process, as `slmforge app --local` and `slmforge chat` run it.
- cloud: `slmforge serve` of the same model in PyTorch (fp32) on 127.0.0.1, streamed through
  `RemoteEngine` (the official `openai` client), as `--cloud openai:MODEL@URL` runs it. Here
  the "cloud" shares the machine's cores with the local side (one request at a time, so they
  never run together); a real cloud endpoint adds network latency and has a GPU.

Both sides are timed by the one `measure` of `runtime/engine.py` (what the app and `app compare`
report): TTFT from the call to the first text delta, tokens/s over the decode after it. Each
side gets one warm-up request, then every prompt `--repeats` times, greedy, `--max-tokens`
long. Prints each side's mean/p50/p95 side by side with local/cloud ratios.

    .venv/bin/python benchmarks/app_latency.py
    .venv/bin/python benchmarks/app_latency.py --max-tokens 32 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import numpy as np
from bench_models import CACHE, log, onnx_model, slmforge_command, small_model
from serve_load import PROMPTS, free_port, load_average, wait_ready

from slmforge.runtime.engine import Engine, GenParams, complete

STATS = ("mean", "p50", "p95")


def measure_side(engine: Engine, args: argparse.Namespace) -> dict[str, list[float]]:
    params = GenParams(max_tokens=args.max_tokens, temperature=0.0)
    complete(engine, [{"role": "user", "content": PROMPTS[0]}], params)  # warm-up
    figures: dict[str, list[float]] = {"ttft_s": [], "tokens_per_s": [], "tokens": []}
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            done = complete(engine, [{"role": "user", "content": prompt}], params)
            if done.timings.ttft_s is not None:
                figures["ttft_s"].append(done.timings.ttft_s)
            if done.timings.tokens_per_s is not None:
                figures["tokens_per_s"].append(done.timings.tokens_per_s)
            figures["tokens"].append(done.usage.completion_tokens)
    return figures


def stat(values: list[float], name: str) -> float:
    if not values:
        return float("nan")
    return float(np.mean(values)) if name == "mean" else float(np.percentile(values, int(name[1:])))


def cloud_side(args: argparse.Namespace) -> dict[str, list[float]]:
    from slmforge.runtime.remote import RemoteEngine

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [slmforge_command(), "--log-format", "plain", "serve", str(small_model())]
    command += ["--port", str(port)]
    log("cloud: " + " ".join(command))
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "app-latency-serve.log", "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            model = wait_ready(url, process)
            engine = RemoteEngine(model, f"{url}/v1", api_key="unused", max_retries=0)
            log(f"cloud: measuring (load average {load_average()})")
            return measure_side(engine, args)
        finally:
            process.terminate()
            process.wait(timeout=30)


def local_side(args: argparse.Namespace) -> dict[str, list[float]]:
    from slmforge.runtime.onnx_engine import OnnxEngine

    folder = onnx_model("int4")
    engine = OnnxEngine(folder, adapters={})
    log(f"local: {folder} (load average {load_average()})")
    return measure_side(engine, args)


def report(local: dict[str, list[float]], cloud: dict[str, list[float]]) -> None:
    rows = {"ttft_s": ("TTFT", 1000.0, "ms"), "tokens_per_s": ("tokens/s", 1.0, "")}
    print(f"{'figure':<16} {'local int4 ONNX':>16} {'cloud (served)':>16} {'local/cloud':>12}")
    for key, (label, scale, unit) in rows.items():
        for name in STATS:
            a, b = stat(local[key], name), stat(cloud[key], name)
            print(
                f"{label + ' ' + name:<16} {a * scale:>13.1f}{unit:>3} {b * scale:>13.1f}{unit:>3}"
                f" {a / b:>11.2f}x"
            )
    tokens = f"{np.mean(local['tokens']):.1f} local, {np.mean(cloud['tokens']):.1f} cloud"
    print(f"completion tokens per answer (mean): {tokens}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the 8 prompts")
    args = parser.parse_args()
    started = time.perf_counter()
    log(f"{os.cpu_count()} CPUs, load average {load_average()}")
    local = local_side(args)
    cloud = cloud_side(args)
    print(
        f"app latency: small llama, greedy, max_tokens {args.max_tokens}, "
        f"{len(PROMPTS)} prompts x {args.repeats}, one request at a time"
    )
    report(local, cloud)
    log(f"done in {time.perf_counter() - started:.0f}s (load average {load_average()})")


if __name__ == "__main__":
    main()
