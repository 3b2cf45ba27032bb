"""int4 decode speed with ONNX Runtime's pool threads spinning or sleeping, alone and beside a busy
process (a laptop's browser, another job on a shared machine).

slmforge's decode sessions set `session.intra_op.allow_spinning=0` (runtime/onnx_batch.py): a
one-token step is ~300 short ops that each end on a barrier, and a spinning pool thread that
loses its core to another process stalls every op of the step. This script measures both
settings, each in its own process, with the decode probe of `real_size.py` (64 greedy tokens
of one stream, warm-up first; read bandwidth measured in the same process), and prints the
ratios.

    .venv/bin/python benchmarks/decode_contention.py \
        --model .cache/bench/real-size/qwen2.5-0.5b/int4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / ".cache" / "bench" / "real-size" / "qwen2.5-0.5b" / "int4"
BUSY = "while True: pass"


def probe(model: Path, spinning: str, tokens: int) -> dict:
    """The decode probe in a fresh process with `allow_spinning` forced to `spinning`."""
    code = f"""
import json, sys
import onnxruntime as ort
from pathlib import Path
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import slmforge.runtime.onnx_batch as onnx_batch
base = ort.SessionOptions
real_add = base.add_session_config_entry
def add(self, key, value):
    real_add(self, key, {spinning!r} if key == onnx_batch.ALLOW_SPINNING else value)
base.add_session_config_entry = add
from real_size_probe import decode_probe
print(json.dumps(decode_probe(Path({str(model)!r}), None, {tokens})))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model: Path, busy_nice: int | None, repeat: int, tokens: int) -> dict[str, list]:
    busy = None
    if busy_nice is not None:
        busy = subprocess.Popen(["nice", "-n", str(busy_nice), sys.executable, "-c", BUSY])
    try:
        runs: dict[str, list] = {"1": [], "0": []}
        for _ in range(repeat):  # alternate, so drifts in the machine's load hit both
            for spinning in runs:
                runs[spinning].append(probe(model, spinning, tokens))
        return runs
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda run: run["decode_tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="an int4 ONNX folder")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--busy-nice", type=int, default=0, help="niceness of the busy process")
    args = parser.parse_args()
    if not (args.model / "genai_config.json").is_file():
        parser.error(f"{args.model}: not an ONNX folder (build one with slmforge optimize)")
    print("| machine | allow_spinning | tokens/s (best) | roofline ratio | vs spinning |")
    print("|---|---|---|---|---|")
    for label, nice in (("quiet", None), (f"beside a busy process (nice {args.busy_nice})", 0)):
        runs = measure(
            args.model, None if nice is None else args.busy_nice, args.repeat, args.tokens
        )
        spin, sleep = best(runs["1"]), best(runs["0"])
        for name, run in (("1 (ONNX Runtime's default)", spin), ("0 (slmforge)", sleep)):
            ratio = run["decode_tokens_per_s"] / spin["decode_tokens_per_s"]
            print(
                f"| {label} | {name} | {run['decode_tokens_per_s']:.1f} | "
                f"{run['ratio_to_roofline']:.2f} | {ratio:.2f}x |"
            )


if __name__ == "__main__":
    main()
