"""The prefix cache under concurrent clients that share a long system prompt (issue 22):
`slmforge serve` with the cache (default) vs the same server with `--prefix-cache-mib 0`.

8 clients (closed loop) stream chat completions whose system prompt is the same ~400 tokens
(docstring text of the standard library, cut at `--system-tokens` tokens of the model's
tokenizer) followed by one of eight questions; each client sends `--requests` requests, greedy,
`--max-tokens` tokens at most, after two warm-up requests per server (which also put the system
prompt in the cache, as an app's first request would). Prints per server the p50/p95 time to
first token, aggregate tokens/s and requests/s, the TTFT ratio (cache / no cache), whether both
servers gave the same answers, and the server's own prefix-cache counters from /metrics.

    .venv/bin/python benchmarks/prefix_cache.py
    .venv/bin/python benchmarks/prefix_cache.py --engine torch --clients 8 --requests 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time

import numpy as np
from bench_models import CACHE, log, onnx_model, slmforge_command, small_model
from serve_load import free_port, load_average, wait_ready

QUESTIONS = [
    "Which function sorts a list?",
    "How do I read a file line by line?",
    "What does the mode argument of open mean?",
    "How do I split a string once?",
    "What is an ordered dictionary?",
    "How do I start a thread?",
    "What happens when a connection closes early?",
    "How do I decode bytes?",
]


def system_prompt(tokenizer, tokens: int) -> str:
    import inspect

    text = " ".join(inspect.getdoc(f) or "" for f in (sorted, open, str.split, dict, print))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < tokens:
        ids = ids + ids
    return tokenizer.decode(ids[:tokens])


async def one_chat(client, url: str, model: str, system: str, question: str, max_tokens: int):
    body = {
        "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
    }  # fmt: skip
    start, first, parts = time.perf_counter(), None, []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            text = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else ""
            if text:
                first = first or time.perf_counter()
                parts.append(text)
    return (first or time.perf_counter()) - start, len(parts), "".join(parts)


async def load(url: str, model: str, system: str, args: argparse.Namespace):
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=32)) as client:
        for question in QUESTIONS[:2]:  # warm-up; the first also fills the cache
            await one_chat(client, url, model, system, question, args.max_tokens)

        async def client_loop(index: int) -> list:
            return [
                await one_chat(client, url, model, system,
                               QUESTIONS[(index + r) % len(QUESTIONS)], args.max_tokens)
                for r in range(args.requests)
            ]  # fmt: skip

        start = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(i) for i in range(args.clients)))
        wall = time.perf_counter() - start
    return [r for results in per_client for r in results], wall


def run_server(cache_mib: int, args: argparse.Namespace, system: str) -> dict:
    model = small_model() if args.engine == "torch" else onnx_model("int4")
    port = free_port()
    command = [
        slmforge_command(), "--log-format", "plain", "serve", str(model), "--port", str(port),
        "--max-concurrency", str(args.clients), "--prefix-cache-mib", str(cache_mib),
    ]  # fmt: skip
    log("running " + " ".join(command))
    with open(CACHE / f"prefix-cache-server-{cache_mib}.log", "w") as server_log:
        process = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            name = wait_ready(url, process)
            results, wall = asyncio.run(load(url, name, system, args))
            metrics = __import__("httpx").get(f"{url}/metrics").text
        finally:
            process.terminate()
            process.wait(timeout=60)
    counters = dict(re.findall(r"^(slmforge_prefix_cache_\w+) ([0-9.e+]+)$", metrics, re.M))
    ttft = [r[0] for r in results]
    return {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "tokens_per_s": sum(r[1] for r in results) / wall,
        "requests_per_s": len(results) / wall,
        "answers": sorted(r[2] for r in results),
        "counters": counters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="Requests per client.")
    parser.add_argument("--system-tokens", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    system = system_prompt(AutoTokenizer.from_pretrained(small_model()), args.system_tokens)
    runs = {"cache": run_server(256, args, system), "no cache": run_server(0, args, system)}
    setting = f"{args.clients} clients x {args.requests} requests"
    print(f"engine {args.engine}, {setting}, system prompt {args.system_tokens} tokens, "
          f"max_tokens {args.max_tokens}, load {load_average()}")  # fmt: skip
    for name, run in runs.items():
        print(f"{name:>9}: TTFT p50 {run['ttft_p50_s'] * 1000:.0f} ms, p95 "
              f"{run['ttft_p95_s'] * 1000:.0f} ms, {run['tokens_per_s']:.1f} tokens/s, "
              f"{run['requests_per_s']:.2f} requests/s {run['counters'] or ''}")  # fmt: skip
    ratio = runs["cache"]["ttft_p50_s"] / runs["no cache"]["ttft_p50_s"]
    same = runs["cache"]["answers"] == runs["no cache"]["answers"]
    print(f"TTFT p50 ratio (cache / no cache): {ratio:.2f}x; tokens/s ratio "
          f"{runs['cache']['tokens_per_s'] / runs['no cache']['tokens_per_s']:.2f}x; "
          f"same answers: {same}")  # fmt: skip
    if not same:
        sys.exit("the answers differ")


if __name__ == "__main__":
    main()
