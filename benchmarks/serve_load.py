"""Serving throughput under concurrent streaming clients: `slmforge serve` on the int4 ONNX
`small` model (continuous batching) vs llama-cpp-python's OpenAI server on the same weights.

For each client count (1, 4, 8, 16), that many clients stream `/v1/completions` requests back
to back (closed loop), `max(8, 2 x clients)` requests in all, and none started after
`--time-limit` seconds. Every request is greedy and `--max-tokens` long at most, on one of
eight user messages rendered with the model's chat template into text (without the leading
BOS text, which both servers add themselves), so both tokenize the same ids (the script prints
both servers' prompt token counts to show it). Each server gets two warm-up requests.
Completion tokens are the streamed text chunks (one per token in both servers). Prints
requests/s, aggregate tokens/s, p50/p95 time to first token and latency per client count, and
the throughput ratio of 8 clients to 1.

Servers, each in its own process, started and stopped here:
- `slmforge`: `slmforge serve ONNX_INT4 --max-concurrency 16` (requests decode together).
- `slmforge-serial`: the same with `--max-concurrency 1` (one generation at a time).
- `llama-cpp`: `python -m llama_cpp.server` (llama-cpp-python's OpenAI-compatible server) on
  the GGUF Q4_0 conversion of the same weights (`gguf_export.py`), 2 threads, with
  `--interrupt_requests False` (by default it cuts a stream short whenever another request
  waits). It runs one request at a time: llama-cpp-python has no batching across requests.

    .venv/bin/python benchmarks/serve_load.py
    .venv/bin/python benchmarks/serve_load.py --clients 1,8 --servers slmforge,slmforge-serial
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_models import CACHE, gguf_model, log, onnx_model, slmforge_command, small_model

SERVERS = ("slmforge", "slmforge-serial", "llama-cpp")
PROMPTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "How is the configuration file read at start-up?",
    "Open the file and return a stream. What does the mode argument mean?",
    "What is a dictionary that remembers the order in which its keys were added?",
    "What happens if the connection is closed before the response is complete?",
    "Create a new thread that runs the target function with the given arguments.",
    "Split the string at the first occurrence of the separator.",
    "How do I decode bytes with the codec registered for an encoding?",
]
READY_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300


@dataclass
class Result:
    ttft_s: float | None
    latency_s: float
    tokens: int  # streamed text chunks


@dataclass
class Level:
    clients: int
    wall_s: float
    results: list[Result] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, port: int, max_clients: int) -> list[str]:
    if name == "llama-cpp":
        model = gguf_model("q4_0")
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
            "--n_threads", "2", "--n_threads_batch", "2", "--interrupt_requests", "False",
        ]  # fmt: skip
    concurrency = 1 if name == "slmforge-serial" else max_clients
    return [
        slmforge_command(), "--log-format", "plain", "serve",
        str(onnx_model("int4")), "--port", str(port), "--max-concurrency", str(concurrency),
        "--max-queue", "64",
    ]  # fmt: skip


def wait_ready(url: str, process: subprocess.Popen) -> str:
    """The served model's id, once the server answers."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see its log")
        try:
            reply = httpx.get(f"{url}/v1/models", timeout=5)
            if reply.status_code == 200:
                return reply.json()["data"][0]["id"]
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} was not ready within {READY_TIMEOUT_S}s")


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    first, chunks = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data.strip() == "[DONE]":
                break
            chunk = json.loads(data)
            text = (chunk["choices"][0].get("text") or "") if chunk.get("choices") else ""
            if text:
                first = first or time.perf_counter()
                chunks += 1
    end = time.perf_counter()
    return Result(None if first is None else first - start, end - start, chunks)


async def run_level(
    url: str, model: str, prompts: list[str], clients: int, args: argparse.Namespace
) -> Level:
    import httpx

    total = max(8, 2 * clients)
    next_index = iter(range(total))
    results: list[Result] = []
    deadline = time.monotonic() + args.time_limit

    async def client_loop(client) -> None:
        for index in next_index:
            if time.monotonic() > deadline:
                return
            prompt = prompts[index % len(prompts)]
            results.append(await one_request(client, url, model, prompt, args.max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return Level(clients, wall, results)


def chat_prompts(tokenizer) -> list[str]:
    """The user messages rendered with the chat template, without the leading BOS text: both
    servers add BOS themselves, so both then see the same token ids."""
    bos = tokenizer.bos_token or ""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        ).removeprefix(bos)
        for p in PROMPTS
    ]


def run_server(name: str, args: argparse.Namespace, tokenizer) -> list[Level]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = server_command(name, port, max(args.clients))
    prompts = chat_prompts(tokenizer)
    log(f"{name}: " + " ".join(command))
    with open(logs / f"serve-{name}.log", "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            model = wait_ready(url, process)
            log(f"{name}: prompt tokens {prompt_tokens(url, model, prompts[0])}")
            asyncio.run(warm_up(url, model, prompts[0], args.max_tokens))
            levels = []
            for clients in args.clients:
                log(f"{name}: {clients} clients (load average {load_average()})")
                levels.append(asyncio.run(run_level(url, model, prompts, clients, args)))
            return levels
        finally:
            process.terminate()
            process.wait(timeout=30)


async def warm_up(url: str, model: str, prompt: str, max_tokens: int) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(2):
            await one_request(client, url, model, prompt, max_tokens)


def prompt_tokens(url: str, model: str, prompt: str) -> int:
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
    reply.raise_for_status()
    return reply.json()["usage"]["prompt_tokens"]


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report(all_levels: dict[str, list[Level]], args: argparse.Namespace) -> None:
    print(f"serve load: small llama, greedy, max_tokens {args.max_tokens}, streaming completions")
    header = (
        f"{'server':<16} {'clients':>7} {'reqs':>5} {'req/s':>6} {'tok/s':>7} "
        f"{'TTFT p50':>9} {'TTFT p95':>9} {'lat p50':>8} {'lat p95':>8} {'tok/req':>7}"
    )
    print(header)
    for name, levels in all_levels.items():
        for level in levels:
            ttft = [r.ttft_s for r in level.results if r.ttft_s is not None]
            latency = [r.latency_s for r in level.results]
            count = len(level.results)
            print(
                f"{name:<16} {level.clients:>7} {count:>5} {count / level.wall_s:>6.2f} "
                f"{level.tokens / level.wall_s:>7.1f} {percentile(ttft, 50) * 1000:>7.0f}ms "
                f"{percentile(ttft, 95) * 1000:>7.0f}ms {percentile(latency, 50):>7.2f}s "
                f"{percentile(latency, 95):>7.2f}s {level.tokens / max(count, 1):>7.1f}"
            )
    for name, levels in all_levels.items():
        rate = {lv.clients: lv.tokens / lv.wall_s for lv in levels}
        if 1 in rate and 8 in rate:
            print(f"{name}: aggregate tokens/s at 8 clients / 1 client = {rate[8] / rate[1]:.2f}x")
    if "slmforge" in all_levels and "llama-cpp" in all_levels:
        ours = {lv.clients: lv.tokens / lv.wall_s for lv in all_levels["slmforge"]}
        theirs = {lv.clients: lv.tokens / lv.wall_s for lv in all_levels["llama-cpp"]}
        ratios = ", ".join(f"{c}: {ours[c] / theirs[c]:.2f}x" for c in ours if c in theirs)
        print(f"slmforge / llama-cpp aggregate tokens/s by clients: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--servers", default="slmforge,llama-cpp")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per client count")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    servers = args.servers.split(",")
    if set(servers) - set(SERVERS):
        raise SystemExit(f"--servers: choose from {', '.join(SERVERS)}")
    from slmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(small_model())
    results = {name: run_server(name, args, tokenizer) for name in servers}
    report(results, args)


if __name__ == "__main__":
    main()
