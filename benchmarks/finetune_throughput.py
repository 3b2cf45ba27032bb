"""Fine-tuning throughput and peak memory: slmforge vs a plain Hugging Face Trainer + PEFT.

Both train the same LoRA (same model, data, rank, targets, batch, steps, threads) in their own
subprocess, so peak RSS is measured per run. Prints tokens/s (real, non-padding tokens), peak
RSS and the ratios against the plain Trainer. The runs:

  baseline           Trainer + PEFT, batches in the shuffled order
  baseline-grouped   the same with the Trainer's own length grouping
                     (`train_sampling_strategy="group_by_length"`, once `group_by_length=True`)
  slmforge           `slmforge finetune` as a user runs it (length-grouped batches by default)
  slmforge-ungrouped `--no-group-by-length`
  slmforge-packed    `--packing`
  slmforge-unshared  `--no-share-prefix` (only with --runs: matters with --system)
  slmforge-fp32      `--precision fp32` (only with --runs, as the next two)
  slmforge-bf16      `--precision bf16`: a bf16 base under autocast, even from an fp32 checkpoint
  baseline-bf16      the Trainer with `bf16=True` (autocast over the checkpoint's weights)

Both load the checkpoint in its dtype: an fp32 checkpoint trains in fp32, a bf16 one in bf16
(`dtype=bfloat16` and `bf16=True` for the Trainer; slmforge's default on a CPU with native bf16).
Both are timed alike (`StepClock`); use --threads 1 on a shared machine (docs/benchmarks.md).
Run:

    .venv/bin/python benchmarks/finetune_throughput.py            # builds the `small` model once
    .venv/bin/python benchmarks/finetune_throughput.py --model DIR --steps 20
    .venv/bin/python benchmarks/finetune_throughput.py --model DIR --runs baseline,slmforge
    .venv/bin/python benchmarks/finetune_throughput.py --system "You are ..." \
        --runs baseline,slmforge,slmforge-unshared   # every row opens with that system prompt
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
RUNS = ("baseline", "baseline-grouped", "slmforge", "slmforge-ungrouped", "slmforge-packed")
# precision other than auto; baseline-fp32: the Trainer over an fp32 copy of a bf16 checkpoint
# (what a CPU without native bf16 can run at speed)
EXTRA_RUNS = (
    "slmforge-fp32",
    "slmforge-bf16",
    "baseline-bf16",
    "baseline-fp32",
    "slmforge-unshared",
)


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec,
    so a child would report its parent's peak (here: the parent that built the model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Times optimizer steps 2..N of a run the same way for both tools: the first step, with its
    one-off warm-up, is left out; the clock starts when step 2 starts and stops when the
    training function returns. Counts real (non-padding) tokens, in wall and in CPU seconds
    (CPU time is the steadier figure on a shared machine; run with --threads 1 to compare
    there, since idle OpenMP threads spin and count as CPU time)."""

    def __init__(self) -> None:
        self.steps = self.tokens = 0
        self.wall = self.cpu = 0.0

    def step(self, tokens: int) -> None:
        self.steps += 1
        if self.steps == 2:
            self.wall, self.cpu = time.perf_counter(), time.process_time()
        if self.steps >= 2:
            self.tokens += tokens

    def stop(self) -> dict:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {"tokens_per_s": self.tokens / wall, "tokens_per_cpu_s": self.tokens / cpu}


def _encoded(model: str, data: Path, max_seq_len: int):
    from slmforge.data.formats import read_examples
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_tokenizer
    from slmforge.train.collate import encode

    tokenizer = load_tokenizer(model)
    stops = stop_strings(tokenizer)
    examples = read_examples(data)
    return tokenizer, [encode(tokenizer, e.messages, max_seq_len, stops=stops) for e in examples]


def run_slmforge(args: argparse.Namespace) -> dict:
    from slmforge import progress
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.train import loop, sft

    progress.configure("plain", quiet=True)
    clock, timed = StepClock(), {}
    real_step, real_fit = loop.train_step, sft.fit

    def train_step(plan, micro_batches, window):
        clock.step(sum(len(e.input_ids) for mb in micro_batches for row in mb for e in row))
        return real_step(plan, micro_batches, window)

    def fit(plan, log):
        real_fit(plan, log)
        timed.update(clock.stop())

    loop.train_step, sft.fit = train_step, fit
    cfg = FinetuneConfig(
        model=args.model,
        data=args.data,
        out=Path(args.work) / args.child,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        packing=args.child == "slmforge-packed",
        group_by_length=args.child != "slmforge-ungrouped",
        share_prefix=args.child != "slmforge-unshared",
        precision={"slmforge-fp32": "fp32", "slmforge-bf16": "bf16"}.get(args.child, "auto"),
        lr=1e-4,
        samples=0,
        log_every=args.steps,
        force=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
    )
    start = time.perf_counter()
    sft.finetune(cfg)
    return {**timed, "wall_s": time.perf_counter() - start, "peak_rss_mib": _peak_rss_mib()}


def run_baseline(args: argparse.Namespace) -> dict:
    """A plain Trainer + PEFT LoRA on the same tokenized examples, padded per batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer, encoded = _encoded(args.model, args.data, args.max_seq_len)
    rows = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in encoded
    ]
    bf16 = _checkpoint_is_bf16(args.model) and args.child != "baseline-fp32"
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if model.config.model_type == "phi3":
        targets = ["qkv_proj", "o_proj"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"
        ),
    )
    clock = StepClock()
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    class CountingTrainer(Trainer):
        """Counts the real (non-padding) tokens of batches actually trained on, as slmforge
        does. Counting in the collator would over-count: accelerate's data loader fetches one
        batch ahead, so it sees steps + 1 batches."""

        def training_step(self, model, inputs, *rest, **kwargs):
            clock.step(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *rest, **kwargs)

    training = TrainingArguments(
        output_dir=str(Path(args.work) / "baseline"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-4,
        logging_steps=args.steps,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="cosine",
        remove_unused_columns=False,
        seed=42,
        bf16=bf16 or args.child == "baseline-bf16",
        train_sampling_strategy="group_by_length" if args.child == "baseline-grouped" else "random",
    )
    trainer = CountingTrainer(
        model=model, args=training, train_dataset=rows, data_collator=collator
    )
    start = time.perf_counter()
    trainer.train()
    timed = clock.stop()
    return {**timed, "wall_s": time.perf_counter() - start, "peak_rss_mib": _peak_rss_mib()}


def _checkpoint_is_bf16(model: str) -> bool:
    config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    return (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"


def _child(kind: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        args.model,
        "--data",
        str(args.data),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-len",
        str(args.max_seq_len),
        "--work",
        str(args.work),
        *(["--threads", str(args.threads)] if args.threads else []),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _prepare(args: argparse.Namespace) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from bench_models import small_model

        args.model = str(small_model())
    if args.data is None:
        from slmforge.data.sample import write_sample

        args.data = write_sample(CACHE / "travel.jsonl", force=True)
    if args.system:
        args.data = _with_system(args.data, args.system)
    args.work = str(CACHE / "finetune-work")


def _with_system(data: Path, system: str) -> Path:
    """A copy of `data` whose every row opens with `system` as its system message."""
    from slmforge.data.formats import read_examples

    rows = []
    for example in read_examples(data):
        messages = [m for m in example.messages if m["role"] != "system"]
        rows.append(json.dumps({"messages": [{"role": "system", "content": system}, *messages]}))
    out = CACHE / f"{Path(data).stem}-system.jsonl"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--runs", default=",".join(RUNS), help="Comma-separated runs to do.")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--system", help="Give every row this system prompt.")
    parser.add_argument("--work")
    parser.add_argument("--child", choices=RUNS + EXTRA_RUNS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        runner = run_baseline if args.child.startswith("baseline") else run_slmforge
        print(json.dumps(runner(args)))
        return
    _prepare(args)
    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"model {args.model}, steps {args.steps}, batch {args.batch_size}, "
        f"max_seq_len {args.max_seq_len}, torch threads {threads}"
    )
    results = {}
    for kind in args.runs.split(","):
        results[kind] = _child(kind, args)
        print(f"[bench] {kind}: {json.dumps(results[kind])}", file=sys.stderr, flush=True)
    base = results.get("baseline") or next(iter(results.values()))
    print(
        f"{'run':<20}{'tokens/s':>10}{'x':>6}{'tok/CPU-s':>11}{'x':>6}{'peak RSS MiB':>14}{'x':>6}"
    )
    for kind, r in results.items():
        print(
            f"{kind:<20}{r['tokens_per_s']:>10.0f}"
            f"{r['tokens_per_s'] / base['tokens_per_s']:>6.2f}"
            f"{r['tokens_per_cpu_s']:>11.0f}"
            f"{r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:>6.2f}"
            f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f}"
        )


if __name__ == "__main__":
    main()
