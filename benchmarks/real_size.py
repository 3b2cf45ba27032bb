"""The whole journey at real model sizes (issue 19), each stage as a user runs it.

For each shape (`--shapes`, default `qwen2.5-0.5b,phi-3-mini-4k`), in `--work/<shape>/`, every
stage is its own `slmforge` process: `models init --like` (bf16; reused when built), `finetune`
(LoRA, 3 steps, batch 2 x 256, on `slmforge data sample`), `merge`, `optimize --precision int4
--adapter travel=ADAPTER`, `chat --timings` (one piped prompt), `serve` + one request with the
official `openai` client, `eval` on 10 rows of the int4 model with the adapter, and a decode probe
(64 greedy tokens of the int4 model in one stream, against the memory roofline measured in the
same process with ONNX Runtime's thread count). Each stage gets its wall time and peak RSS (see
`real_size_probe.py` for how the process tree is measured), the issue's bound where it sets one,
and the memory estimate that speaks for it: finetune's own check on its real rows (recorded in
the adapter's slmforge.json, `details.memory_estimate`), and `slmforge doctor --model --json`'s
`fit.merge`, `fit.optimize` and `fit.inference` (for chat, serve and eval, with a context of the
longest prompt they send plus the reply tokens). A stage whose tree passes `--guard-gib` is killed
and reported. Results: a table on stdout and `--json-out`.

    .venv/bin/python benchmarks/real_size.py --shapes qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench_models import REPO, log, slmforge_command
from real_size_probe import GIB, StageRun, run_stage

SHAPES = ("qwen2.5-0.5b", "phi-3-mini-4k")
FINETUNE = ["--max-steps", "3", "--batch-size", "2", "--max-seq-len", "256", "--samples", "0"]
FIT_OPTIONS = ["--batch-size", "2"]
EVAL_ROWS = 10
ADAPTER = "travel"
PROMPT = "What should I pack for a weekend in Lisbon?"
MAX_TOKENS = "32"
DECODE_TOKENS = 64
# Stage -> the fit report's section that estimates it (finetune's comes from its own check,
# which knows the rows it trained on: see finetune_estimate).
FIT_SECTIONS = {
    "finetune": "finetune_run",
    "merge": "merge",
    "optimize": "optimize",
    "chat": "inference",
    "serve": "inference",
    "eval": "inference",
}


def stage_commands(
    shape: str, folder: Path, data: Path, optimize_args: list[str]
) -> list[tuple[str, list[str], dict]]:
    model, adapter, int4 = folder / "model", folder / "adapter", folder / "int4"
    cli = slmforge_command()
    return [
        ("init", [cli, "models", "init", "--like", shape, "--dtype", "bf16", "--out", str(model)],
         {"timeout_s": 1800}),
        ("finetune", [cli, "finetune", "--model", str(model), "--data", str(data),
                      "--out", str(adapter), *FINETUNE, "--force"], {"timeout_s": 2400}),
        ("merge", [cli, "merge", "--adapter", str(adapter), "--out", str(folder / "merged"),
                   "--force"], {"timeout_s": 1200}),
        ("optimize", [cli, "optimize", "--model", str(model), "--out", str(int4),
                      "--precision", "int4", "--adapter", f"{ADAPTER}={adapter}", "--force",
                      *optimize_args],
         {"timeout_s": 3600}),
        ("chat", [cli, "chat", str(int4), "--adapter", ADAPTER, "--timings",
                  "--max-tokens", MAX_TOKENS], {"timeout_s": 900, "stdin": PROMPT + "\n"}),
        ("serve", [cli, "serve", str(int4), "--port", "{port}"], {"timeout_s": 900}),
        ("eval", [cli, "eval", "--data", str(data), "--target", f"int4={int4}+{ADAPTER}",
                  "--limit", str(EVAL_ROWS), "--max-tokens", MAX_TOKENS,
                  "--out", str(folder / "eval"), "--force"], {"timeout_s": 1800}),
        ("decode", [sys.executable, str(Path(__file__).resolve()), "--decode-child",
                    str(int4)], {"timeout_s": 900}),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_request(port: int, ready_timeout_s: float = 600) -> dict:
    """Wait until the server answers /health, then one chat request to the adapter."""
    import httpx
    import openai

    start, url = time.perf_counter(), f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.perf_counter() - start > ready_timeout_s:
            raise TimeoutError(f"server not ready after {ready_timeout_s:.0f} s")
        time.sleep(0.5)
    ready = time.perf_counter() - start
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    asked = time.perf_counter()
    reply = client.chat.completions.create(
        model=ADAPTER,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=int(MAX_TOKENS),
        temperature=0,
    )
    return {
        "ready_s": ready,
        "request_s": time.perf_counter() - asked,
        "completion_tokens": reply.usage.completion_tokens,
        "finish_reason": reply.choices[0].finish_reason,
    }


def inference_context(model: Path, data: Path) -> int:
    """Tokens of the longest prompt chat, serve and eval send (chat-templated), plus the reply:
    the context the inference estimate is asked about."""
    from slmforge.evaluate.dataset import read_rows
    from slmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    prompts = [[{"role": "user", "content": PROMPT}]]
    prompts += [row.prompt for row in read_rows(data, limit=EVAL_ROWS)]
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return longest + int(MAX_TOKENS)


def finetune_estimate(adapter: Path) -> dict:
    """The estimate `slmforge finetune`'s own memory check made for the rows it trained on."""
    try:
        manifest = json.loads((adapter / "slmforge.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest.get("details", {}).get("memory_estimate") or {}


def fit_report(model: Path, context: int) -> dict:
    options = [*FIT_OPTIONS, "--max-seq-len", str(context)]
    proc = subprocess.run(
        [slmforge_command(), "doctor", "--model", str(model), "--json", *options],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return json.loads(proc.stdout).get("fit") or {}
    except json.JSONDecodeError:
        return {}


def checkpoint_bytes(model: Path) -> int:
    return sum(path.stat().st_size for path in model.glob("*.safetensors"))


def bound_bytes(stage: str, checkpoint: int, fit: dict) -> int | None:
    """The issue's acceptance bound for `stage`, None where it sets none."""
    if stage == "optimize":
        return int(1.5 * checkpoint) + GIB
    if stage == "merge":
        return int(1.2 * checkpoint) + GIB
    if stage == "finetune":
        parts = fit.get("finetune_run", {}).get("components_bytes", {})
        # activations as finetune's fit check counts them: the layers' and the logits'
        activations = parts.get("activations", 0) + parts.get("logits", 0)
        return int(1.3 * checkpoint) + activations + GIB
    return None


def record(stage: str, run: StageRun, checkpoint: int, fit: dict) -> dict:
    row = {
        "stage": stage,
        "seconds": round(run.seconds, 1),
        "peak_rss_bytes": run.peak_rss_bytes,
        "returncode": run.returncode,
        "killed": run.killed,
        **run.extra,
    }
    bound = bound_bytes(stage, checkpoint, fit)
    if bound is not None:
        row |= {"bound_bytes": bound, "bound_holds": run.peak_rss_bytes <= bound}
    section = fit.get(FIT_SECTIONS.get(stage, ""), {})
    if "total_bytes" in section:
        estimate = section["total_bytes"]
        row |= {
            "fit_estimate_bytes": estimate,
            "fit_estimate_from": FIT_SECTIONS[stage],
            "fit_vs_measured": round(estimate / run.peak_rss_bytes - 1, 3),
            "fit_within_25pct": abs(estimate - run.peak_rss_bytes) <= 0.25 * run.peak_rss_bytes,
        }
    if run.returncode != 0 and run.killed is None:
        row["stderr_tail"] = run.stderr[-1500:]
    return row


def stage_extra(stage: str, run: StageRun) -> None:
    """What a stage prints that the table shows: chat's timings line, decode's probe."""
    if stage == "chat":
        lines = [line for line in run.stderr.splitlines() if "ttft" in line or "timings" in line]
        run.extra["timings"] = lines[-1].strip() if lines else None
        run.extra["answer_chars"] = len(run.stdout)
    if stage == "decode" and run.returncode == 0:
        run.extra |= json.loads(run.stdout.strip().splitlines()[-1])


def run_shape(shape: str, work: Path, data: Path, guard: int, optimize_args: list[str]) -> dict:
    folder = work / shape
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model"
    result: dict = {"shape": shape, "stages": []}
    checkpoint, fit = 0, {}
    for stage, argv, options in stage_commands(shape, folder, data, optimize_args):
        if stage == "init" and (model / "slmforge.json").is_file():
            log(f"{shape}: init: reusing {model}")
            result["stages"].append({"stage": "init", "reused": True})
        else:
            port = free_port()
            argv = [part.replace("{port}", str(port)) for part in argv]
            during = (lambda port=port: serve_request(port)) if stage == "serve" else None
            log(f"{shape}: {stage}: {' '.join(argv)}")
            run = run_stage(
                argv,
                cwd=folder,
                timeout_s=options["timeout_s"],
                guard_bytes=guard,
                stdin=options.get("stdin"),
                during=during,
                log=log,
            )
            stage_extra(stage, run)
            if stage == "finetune":
                fit["finetune_run"] = finetune_estimate(folder / "adapter")
            row = record(stage, run, checkpoint, fit)
            result["stages"].append(row)
            log(f"{shape}: {stage}: {row['seconds']} s, {run.peak_rss_bytes / GIB:.2f} GiB")
            # serve ends by our SIGINT: its request is what says whether it worked
            failed = "error" in run.extra if stage == "serve" else run.returncode != 0
            if run.killed or failed:
                log(f"{shape}: {stage} failed; later stages need its output: stopping here")
                result["stopped_at"] = stage
                break
        if stage == "init":
            context = inference_context(model, data)
            checkpoint, fit = checkpoint_bytes(model), fit_report(model, context)
            result |= {"checkpoint_bytes": checkpoint, "inference_context": context, "fit": fit}
    result["llama_cpp_q4_0"] = llama_cpp_status(shape)
    return result


def llama_cpp_status(shape: str) -> str:
    reasons = []
    if importlib.util.find_spec("llama_cpp") is None:
        reasons.append("llama-cpp-python is not installed")
    if not shape.startswith("llama"):
        reasons.append("GGUF export (benchmarks/gguf_export.py) supports llama only")
    return "not measured: " + "; ".join(reasons) if reasons else "not implemented for this shape"


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def table(results: list[dict]) -> str:
    lines = [
        "| shape | stage | s | peak RSS GiB | bound GiB | holds | fit est. GiB | est. vs measured "
        "| within 25% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["stages"]:
            if row.get("reused"):
                lines.append(f"| {result['shape']} | init | reused | | | | | | |")
                continue
            holds = {True: "yes", False: "**no**"}.get(row.get("bound_holds"), "")
            within = {True: "yes", False: "**no**"}.get(row.get("fit_within_25pct"), "")
            versus = row.get("fit_vs_measured")
            versus = "" if versus is None else f"{versus:+.0%}"
            status = f" ({row['killed']})" if row["killed"] else ""
            status += " (failed)" if row["returncode"] not in (0, None) and not status else ""
            lines.append(
                f"| {result['shape']} | {row['stage']}{status} | {row['seconds']} "
                f"| {gib(row['peak_rss_bytes'])} | {gib(row.get('bound_bytes'))} | {holds} "
                f"| {gib(row.get('fit_estimate_bytes'))} | {versus} | {within} |"
            )
    return "\n".join(lines)


def summary(result: dict) -> list[str]:
    lines = [
        f"{result['shape']}: bf16 checkpoint {gib(result.get('checkpoint_bytes'))} GiB; "
        f"inference estimated for a {result.get('inference_context')}-token context"
    ]
    for row in result["stages"]:
        if row.get("stage") == "chat":
            lines.append(f"  chat --timings: {row.get('timings')}")
        if row.get("stage") == "serve":
            keys = ("ready_s", "request_s", "completion_tokens", "error")
            lines.append("  serve: " + ", ".join(f"{k} {row[k]}" for k in keys if k in row))
        if row.get("stage") == "decode" and "decode_tokens_per_s" in row:
            lines.append(
                f"  int4 decode {row['decode_tokens_per_s']:.1f} tokens/s with "
                f"{row['threads']} threads; read bandwidth {row['read_bandwidth_gb_s']:.1f} GB/s "
                f"/ {row['bytes_per_token'] / 1e6:.0f} MB per token = roofline "
                f"{row['roofline_tokens_per_s']:.1f} tokens/s; ratio "
                f"{row['ratio_to_roofline']:.2f} (goal >= 0.70)"
            )
    lines.append(f"  llama.cpp Q4_0: {result['llama_cpp_q4_0']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "real-size")
    parser.add_argument("--json-out", type=Path, default=None, help="default: WORK/results.json")
    parser.add_argument("--guard-gib", type=float, default=20.0)
    parser.add_argument(
        "--optimize-args",
        default="",
        help="more `slmforge optimize` options, e.g. '--max-kl 0.6' (random weights)",
    )
    parser.add_argument("--decode-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_child is not None:
        from real_size_probe import decode_probe

        print(json.dumps(decode_probe(args.decode_child, ADAPTER, DECODE_TOKENS)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "sample.jsonl"
    if not data.is_file():
        cmd = [slmforge_command(), "data", "sample", "--out", str(data)]
        subprocess.run(cmd, check=True)
    out = args.json_out or args.work / "results.json"
    results = []
    for shape in args.shapes.split(","):
        guard, extra = int(args.guard_gib * GIB), shlex.split(args.optimize_args)
        results.append(run_shape(shape, args.work, data, guard, extra))
        out.write_text(json.dumps(results, indent=2))  # after each shape: a long run keeps some
    print(table(results))
    for result in results:
        print("\n".join(summary(result)))
    log(f"results: {out}")


if __name__ == "__main__":
    main()
