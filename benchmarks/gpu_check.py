"""The GPU check of issue 19, run by `benchmarks/gpu_check.sh`: real shapes on one CUDA GPU in a
bounded time, every part recorded as ok, failed or skipped (with why) in one JSON file.

Parts, in order of priority (a part that cannot finish in the time left is skipped, not begun):
1. the machine: Python, torch, CUDA device, the packages slmforge needs;
2. for each shape (`qwen2.5-0.5b`, then `phi-3-mini-4k`): `slmforge models init --dtype bf16`,
   then bf16 LoRA and full fine-tuning, the Hugging Face Trainer (+ PEFT) baseline and slmforge
   each in its own process (`gpu_finetune.py`): tokens/s and peak GPU memory;
3. after the first shape's runs, `slmforge serve --engine torch --device cuda` on it under 1
   and 8 concurrent streaming clients (`serve_load.py`'s load generator): aggregate tokens/s,
   time to first token and latency.

`--device cpu` (GPU_CHECK_DEVICE=cpu in gpu_check.sh) is the smoke test of every code path on a
machine without a GPU: one layer, two steps, a few tokens, and no full fine-tuning of the
3.8B shape (its one layer and 32k vocabulary would need over 4 GiB for AdamW).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHAPES = ("qwen2.5-0.5b", "phi-3-mini-4k")
METHODS = ("lora", "full")
RESERVE_S = 10  # kept back for the summary and the JSON
CAP_FACTOR = 3
# Rough wall times on the H200 (import, load, 20 steps, save), used to skip what cannot finish.
NEED_S = {"init": 20, "finetune": 25, "serve": 60}
NEED_SCALE = {"qwen2.5-0.5b": 1.0, "phi-3-mini-4k": 2.5}
CPU_SMOKE_SKIPS = {("phi-3-mini-4k", "full")}
PACKAGES = ("torch", "transformers", "peft", "accelerate", "pydantic", "fastapi", "uvicorn")


class PartError(Exception):
    """A part could not run or failed; the message says why."""


@dataclass
class Check:
    args: argparse.Namespace
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def part(self, name: str, need_s: float, run: Any) -> dict[str, Any]:
        """Run `run(timeout_s)` unless too little time is left; record how it went. A part
        gets at most CAP_FACTOR x its expected time, so one that hangs leaves time for the
        rest."""
        if self.left() < need_s:
            return self.record(name, "skipped", f"out of time ({self.left():.0f}s left)")
        started = time.monotonic()
        try:
            data = run(min(self.left(), max(need_s * CAP_FACTOR, 60)))
        except PartError as err:
            return self.record(name, "failed", str(err), started)
        except Exception as err:  # any other failure: say it and go on to the next part
            return self.record(name, "failed", f"{type(err).__name__}: {err}", started)
        return self.record(name, "ok", None, started, data)

    def record(
        self,
        name: str,
        status: str,
        reason: str | None = None,
        started: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        entry = {"status": status}
        if reason:
            entry["reason"] = reason
        if started is not None:
            entry["wall_s"] = round(time.monotonic() - started, 1)
        if data:
            entry.update(data)
        self.results.setdefault("parts", {})[name] = entry
        note = f" ({reason})" if reason else ""
        print(f"[gpu_check] {name}: {status}{note}", file=sys.stderr, flush=True)
        self.save()  # so a run stopped from outside still leaves what it measured
        return entry

    def save(self, lines: list[str] | None = None) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / "gpu_check.log").write_text("\n".join(self.log_lines) + "\n")
        if lines is not None:
            (out / "gpu_check.txt").write_text("\n".join(lines) + "\n")

    def child(self, command: list[str], timeout_s: float, name: str) -> str:
        """Run a child process within `timeout_s`; its stdout, or a PartError with its end."""
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as err:
            self.keep_log(name, err.stderr)
            raise PartError(f"stopped after {timeout_s:.0f}s (time limit)") from None
        self.keep_log(name, done.stderr)
        if done.returncode:
            raise PartError(f"exit {done.returncode}: {last_line(done.stderr)}")
        return done.stdout

    def keep_log(self, name: str, text: str | bytes | None) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        tail = (text or "").splitlines()[-40:]
        self.log_lines += [f"==== {name}", *tail]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# -- the machine ---------------------------------------------------------------------------------
def machine(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name) if importlib.util.find_spec(name) else None
        except PackageNotFoundError:
            packages[name] = "present"
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "device": args.device,
        "packages": packages,
        "missing": [name for name, found in packages.items() if found is None],
    }
    if packages["torch"]:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    return info


def blockers(info: dict[str, Any], args: argparse.Namespace) -> str | None:
    """Why nothing can run here, or None."""
    core = [
        name for name in ("torch", "transformers", "peft", "pydantic") if name in info["missing"]
    ]
    if core:
        return f"missing {', '.join(core)} (bash benchmarks/gpu_wheels.sh, carry .cache/gpu-wheels)"
    if args.device == "cuda" and not info.get("cuda_available"):
        return "no CUDA device visible to torch (GPU_CHECK_DEVICE=cpu runs the CPU smoke test)"
    return None


# -- models and fine-tuning ----------------------------------------------------------------------
def slmforge_cli(*words: str) -> list[str]:
    return [sys.executable, "-m", "slmforge", "--log-format", "plain", *words]


def build(check: Check, like: str, timeout_s: float) -> dict[str, Any]:
    from slmforge.config.shapes import get_shape

    folder = Path(check.args.work) / "models" / like
    manifest = folder / "slmforge.json"
    layers = check.args.layers
    if manifest.is_file():  # a rerun on a still-warm machine keeps the models it built
        config = json.loads(manifest.read_text())["config"]
        if config.get("layers") == (layers or get_shape(like).layers):
            return {"model": str(folder), "reused": True}
    depth = ["--layers", str(layers)] if layers else []
    command = slmforge_cli("models", "init", "--like", like, "--dtype", "bf16", *depth)
    check.child([*command, "--out", str(folder), "--force"], timeout_s, f"init {like}")
    parameters = json.loads(manifest.read_text())["metrics"]["parameters"]
    return {"model": str(folder), "parameters": parameters}


def finetune(check: Check, model: str, side: str, method: str, timeout_s: float) -> dict:
    args = check.args
    command = [
        sys.executable, str(BENCH / "gpu_finetune.py"), "--side", side, "--method", method,
        "--model", model, "--data", str(args.data), "--device", args.device,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--max-seq-len", str(args.max_seq_len), "--work", str(Path(args.work) / "runs"),
    ]  # fmt: skip
    stdout = check.child(command, timeout_s, f"finetune {Path(model).name} {method} {side}")
    return json.loads(stdout.strip().splitlines()[-1])


def shape_runs(check: Check, like: str) -> str | None:
    """Build one shape and fine-tune it every way; the model folder, or None."""
    scale = NEED_SCALE.get(like, 1.0)
    built = check.part(f"init {like}", NEED_S["init"] * scale, lambda t: build(check, like, t))
    if built["status"] != "ok":
        return None
    model = built["model"]
    for method in METHODS:
        if check.args.device == "cpu" and (like, method) in CPU_SMOKE_SKIPS:
            check.record(f"finetune {like} {method}", "skipped", "CPU smoke test: over 4 GiB")
            continue
        for side in ("baseline", "slmforge"):
            check.part(
                f"finetune {like} {method} {side}",
                NEED_S["finetune"] * scale * (1.5 if method == "full" else 1.0),
                lambda t, m=method, s=side: finetune(check, model, s, m, t),
            )
    return model


# -- serving -------------------------------------------------------------------------------------
def text_tokens_only(folder: Path) -> int:
    """Zero the output rows past the tokenizer, so greedy decoding picks tokens with text.

    Random weights otherwise pick ids past slmforge's 4,096-token tokenizer (the shape keeps
    the public vocabulary), which stream no text, and a client could time nothing. The shapes
    and the work per token do not change. Returns the tokenizer's size."""
    from safetensors.torch import load_file, save_file

    from slmforge.models.load import load_tokenizer

    size = len(load_tokenizer(folder))
    config = json.loads((folder / "config.json").read_text())
    name = "model.embed_tokens.weight" if config.get("tie_word_embeddings") else "lm_head.weight"
    index = folder / "model.safetensors.index.json"
    shard = json.loads(index.read_text())["weight_map"][name] if index.is_file() else None
    path = folder / (shard or "model.safetensors")
    tensors = load_file(str(path))
    tensors[name][size:] = 0
    save_file(tensors, str(path), metadata={"format": "pt"})
    return size


def serve(check: Check, model: str, timeout_s: float) -> dict[str, Any]:
    import serve_load

    args = check.args
    deadline = time.monotonic() + timeout_s
    text_tokens_only(Path(model))
    port = serve_load.free_port()
    url = f"http://127.0.0.1:{port}"
    command = slmforge_cli(
        "serve", model, "--engine", "torch", "--device", args.device, "--port", str(port),
        "--max-concurrency", str(max(args.clients)), "--max-queue", "64",
    )  # fmt: skip
    log_path = Path(args.work) / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return serve_levels(serve_load, url, process, model, deadline, args)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            check.keep_log("serve", log_path.read_text(errors="replace"))


def serve_levels(
    serve_load: Any, url: str, process: Any, model: str, deadline: float, options: Any
) -> dict[str, Any]:
    from slmforge.models.load import load_tokenizer

    args = SimpleNamespace(time_limit=0.0, max_tokens=options.max_tokens)
    serve_load.READY_TIMEOUT_S = max(deadline - time.monotonic() - 30, 5)
    try:
        model_id = serve_load.wait_ready(url, process)
    except SystemExit as err:  # how serve_load reports a server that never came up
        raise PartError(f"the server did not start: {err}") from None
    prompts = serve_load.chat_prompts(load_tokenizer(model))
    bounded(serve_load.warm_up(url, model_id, prompts[0], args.max_tokens), deadline)
    levels = []
    for clients in options.clients:
        left = deadline - time.monotonic()
        if left < 5:
            raise PartError(f"out of time before {clients} clients (levels done: {levels})")
        args.time_limit = min(options.level_s, left / 2)
        level = bounded(
            serve_load.run_level(url, model_id, prompts, clients, args), deadline, clients
        )
        levels.append(level_summary(serve_load, level))
    return {"max_tokens": args.max_tokens, "levels": levels}


def bounded(coroutine: Any, deadline: float, clients: int | None = None) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(coroutine, max(deadline - time.monotonic(), 1)))
    except asyncio.TimeoutError:
        what = f"{clients} clients" if clients else "the warm-up"
        raise PartError(f"{what} did not finish in the time left") from None


def level_summary(serve_load: Any, level: Any) -> dict[str, Any]:
    ttft = [r.ttft_s for r in level.results if r.ttft_s is not None]
    latency = [r.latency_s for r in level.results]
    return {
        "clients": level.clients,
        "requests": len(level.results),
        "tokens": level.tokens,
        "tokens_per_s": round(level.tokens / level.wall_s, 1),
        "ttft_p50_ms": round(serve_load.percentile(ttft, 50) * 1000, 1) if ttft else None,
        "latency_p50_s": round(serve_load.percentile(latency, 50), 3) if latency else None,
    }


# -- report --------------------------------------------------------------------------------------
def summary(results: dict[str, Any]) -> list[str]:
    info = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    lines = [f"gpu_check on {info.get('gpu', info['device'])}, Python {info['python']}, {versions}"]
    parts = results.get("parts", {})
    lines.append(f"{'fine-tuning':<40}{'tokens/s':>10}{'peak MiB':>10}{'speed x':>9}{'mem x':>7}")
    for name, part in parts.items():
        if not name.startswith("finetune") or part["status"] != "ok":
            continue
        base = parts.get(name.rsplit(" ", 1)[0] + " baseline", {})
        ratio = base.get("status") == "ok" and not name.endswith("baseline")
        speed = f"{part['tokens_per_s'] / base['tokens_per_s']:.2f}" if ratio else ""
        memory = f"{part['peak_mib'] / base['peak_mib']:.2f}" if ratio else ""
        lines.append(
            f"{name.removeprefix('finetune '):<40}{part['tokens_per_s']:>10.0f}"
            f"{part['peak_mib']:>10.0f}{speed:>9}{memory:>7}"
        )
    for level in parts.get("serve", {}).get("levels", []):
        lines.append(
            f"serve {level['clients']} clients: {level['requests']} requests, "
            f"{level['tokens_per_s']} tokens/s, TTFT p50 {level['ttft_p50_ms']} ms, "
            f"latency p50 {level['latency_p50_s']} s"
        )
    for name, part in parts.items():
        if part["status"] != "ok":
            lines.append(f"{part['status']}: {name}: {part.get('reason', '')}")
    return lines


# -- main ----------------------------------------------------------------------------------------
def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "gpu-check")
    parser.add_argument("--work", type=Path, help="models and runs (default: OUT/../work)")
    parser.add_argument("--budget-s", type=float, default=450, help="all parts together")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--layers", type=int, help="decoder layers (default: all; cpu: 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 20; cpu: 2)")
    parser.add_argument("--batch-size", type=int, help="default 8; cpu: 2")
    parser.add_argument("--max-seq-len", type=int, help="default 256; cpu: 64")
    parser.add_argument("--clients", default="1,8", help="concurrent serve clients per level")
    parser.add_argument("--level-s", type=float, help="seconds per client level (20; cpu: 8)")
    parser.add_argument("--max-tokens", type=int, help="tokens per serve request (64; cpu: 8)")
    args = parser.parse_args(argv)
    smoke = args.device == "cpu"
    defaults = {
        "layers": 1 if smoke else None,
        "steps": 2 if smoke else 20,
        "batch_size": 2 if smoke else 8,
        "max_seq_len": 64 if smoke else 256,
        "level_s": 8 if smoke else 20,
        "max_tokens": 8 if smoke else 64,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.clients = [int(c) for c in args.clients.split(",")]
    args.work = args.work or args.out.parent / "gpu-check-work"
    return args


def main() -> int:
    args = options()
    check = Check(args, time.monotonic() + args.budget_s)
    info = check.results["machine"] = machine(args)
    check.results["options"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }
    blocked = blockers(info, args)
    if blocked:
        check.record("all parts", "skipped", blocked)
    else:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        from slmforge.data.sample import write_sample

        args.data = write_sample(Path(args.work) / "travel.jsonl", force=True)
        for index, like in enumerate(args.shapes):
            model = shape_runs(check, like)
            if index == 0 and model is not None:
                missing = [p for p in ("fastapi", "uvicorn") if p in info["missing"]]
                if missing:
                    check.record("serve", "skipped", f"missing {', '.join(missing)}")
                else:
                    check.part("serve", NEED_S["serve"], lambda t, m=model: serve(check, m, t))
    lines = summary(check.results)
    check.save(lines)
    print("\n".join(lines))
    return 1 if blocked else 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))  # serve_load, finetune_throughput
    sys.exit(main())
