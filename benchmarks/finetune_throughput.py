"""Fine-tuning throughput and peak memory: slmforge vs a plain Hugging Face Trainer + PEFT.

Both train the same LoRA (same model, data, rank, targets, batch, steps, threads) in their own
subprocess, so peak RSS is measured per run. Prints tokens/s (real, non-padding tokens), peak
RSS and the ratios. Run:

    .venv/bin/python benchmarks/finetune_throughput.py            # builds the `small` model once
    .venv/bin/python benchmarks/finetune_throughput.py --model DIR --steps 20
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


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec,
    so a child would report its parent's peak (here: the parent that built the model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    from slmforge.train.sft import finetune

    progress.configure("plain", quiet=True)
    out = Path(args.work) / f"slmforge-{'packed' if args.packing else 'padded'}"
    cfg = FinetuneConfig(
        model=args.model,
        data=args.data,
        out=out,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        packing=args.packing,
        lr=1e-4,
        samples=0,
        log_every=args.steps,
        force=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
    )
    start = time.perf_counter()
    finetune(cfg)
    wall = time.perf_counter() - start
    from slmforge.artifacts import read_manifest

    metrics = read_manifest(out).metrics
    return {
        "tokens_per_s": metrics["tokens_per_s"],
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_baseline(args: argparse.Namespace) -> dict:
    """A plain Trainer + PEFT LoRA on the same tokenized examples, padded per batch."""
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
    model = AutoModelForCausalLM.from_pretrained(args.model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if model.config.model_type == "phi3":
        targets = ["qkv_proj", "o_proj"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"
        ),
    )
    seen = {"tokens": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    class CountingTrainer(Trainer):
        """Counts the real (non-padding) tokens of batches actually trained on, as slmforge
        does. Counting in the collator would over-count: accelerate's data loader fetches one
        batch ahead, so it sees steps + 1 batches."""

        def training_step(self, model, inputs, *rest, **kwargs):
            seen["tokens"] += int(inputs["attention_mask"].sum())
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
    )
    trainer = CountingTrainer(
        model=model, args=training, train_dataset=rows, data_collator=collator
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return {"tokens_per_s": seen["tokens"] / wall, "wall_s": wall, "peak_rss_mib": _peak_rss_mib()}


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
    ]
    if kind == "slmforge-packed":
        cmd[3] = "slmforge"
        cmd.append("--packing")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _prepare(args: argparse.Namespace) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from slmforge.models.tiny import build

        args.model = str(CACHE / "small-llama")
        if not (CACHE / "small-llama" / "slmforge.json").exists():
            build("llama", args.model, size="small", force=True)
    if args.data is None:
        from slmforge.data.sample import write_sample

        args.data = write_sample(CACHE / "travel.jsonl", force=True)
    args.work = str(CACHE / "finetune-work")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--work")
    parser.add_argument("--child", choices=["slmforge", "baseline"])
    args = parser.parse_args()
    if args.child:
        runner = run_slmforge if args.child == "slmforge" else run_baseline
        print(json.dumps(runner(args)))
        return
    _prepare(args)
    import torch

    print(
        f"model {args.model}, steps {args.steps}, batch {args.batch_size}, "
        f"max_seq_len {args.max_seq_len}, torch threads {torch.get_num_threads()}"
    )
    results = {kind: _child(kind, args) for kind in ("baseline", "slmforge", "slmforge-packed")}
    base = results["baseline"]
    print(f"{'run':<18}{'tokens/s':>10}{'peak RSS MiB':>14}{'speed x':>9}{'memory x':>10}")
    for kind, r in results.items():
        print(
            f"{kind:<18}{r['tokens_per_s']:>10.0f}{r['peak_rss_mib']:>14.0f}"
            f"{r['tokens_per_s'] / base['tokens_per_s']:>9.2f}"
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:>10.2f}"
        )


if __name__ == "__main__":
    main()
