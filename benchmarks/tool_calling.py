"""A tool-calling fine-tune, measured by `slmforge eval` (issue 22): the offline function-calling
sample (`slmforge data sample --kind tools`: travel questions, four declared functions, the call
whose arguments come from the question), 360 rows to train on and 40 held out; LoRA on a tiny
pretrained model (the model's ChatML template has no tool syntax, so rows are rendered with
slmforge's Hermes fallback); then `tool_call_accuracy` (right functions, arguments valid
against their schemas), `tool_call_exact` (equal arguments) and `tool_name_accuracy` of the base
and of the fine-tune on the held-out questions, with the row's tools offered as an app offers
them (`tool_choice: auto`).

    .venv/bin/python benchmarks/tool_calling.py --steps 400
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_models import CACHE, log

from slmforge.config.evaluate import EvalConfig
from slmforge.config.finetune import FinetuneConfig
from slmforge.data.sample import write_sample
from slmforge.evaluate.runner import run_eval
from slmforge.models.tiny import build
from slmforge.train.sft import finetune


def base_model(arch: str) -> Path:
    folder = CACHE / f"tiny-{arch}"
    if not (folder / "slmforge.json").is_file():
        log(f"building {folder}")
        build(arch, folder, force=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="qwen2")
    parser.add_argument("--base", type=Path, help="Base model folder (default: a tiny --arch)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="finetune --precision")
    parser.add_argument("--out", type=Path, default=CACHE / "tool-calling")
    args = parser.parse_args()
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    lines = write_sample(root / "tools.jsonl", force=True, kind="tools", count=400, seed=5)
    rows = lines.read_text().splitlines(keepends=True)
    (root / "train.jsonl").write_text("".join(rows[:360]))
    (root / "test.jsonl").write_text("".join(rows[360:]))
    base = args.base or base_model(args.arch)
    started = time.perf_counter()
    adapter = finetune(FinetuneConfig(
        model=str(base), data=root / "train.jsonl", out=root / "adapter", max_steps=args.steps,
        lr=5e-3, batch_size=args.batch_size, target_modules=["all-linear"], samples=0, seed=3,
        force=True, log_every=50, precision=args.precision,
    ))  # fmt: skip
    trained = time.perf_counter() - started
    summary = run_eval(EvalConfig(
        data=root / "test.jsonl", target=[f"base={base}", f"tuned={base}+{adapter}"],
        metrics=["tool_call_accuracy", "tool_call_exact", "tool_name_accuracy"],
        out=root / "eval", max_tokens=120, force=True,
    )).summary  # fmt: skip
    print(f"{base.name}, LoRA {args.steps} steps ({trained:.0f} s), 40 held-out questions")
    for target in ("base", "tuned"):
        metrics = summary["results"][target]["metrics"]
        shown = ", ".join(
            f"{name} {m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            for name, m in metrics.items()
        )
        print(f"{target}: {shown}")


if __name__ == "__main__":
    main()
