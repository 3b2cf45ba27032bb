"""One bf16 fine-tuning run on CUDA (or CPU, for the smoke test), slmforge or its baseline, in
this process: tokens/s and peak memory as one JSON line on stdout.

The CUDA side of `finetune_throughput.py` (which measures both sides on CPU), for
`gpu_check.py`: the same tokenized examples and token count (real, non-padding tokens of the
batches trained on), the same LoRA rank and targets, on one device in bf16:

- LoRA: a bf16 base under fp32 adapters with bf16 autocast (slmforge `--precision bf16`;
  the baseline loads the model in bf16, PEFT keeps its adapters in fp32, `Trainer(bf16=True)`).
- full: fp32 master weights with bf16 autocast on both sides (mixed precision), plain AdamW.

Peak memory is `torch.cuda.max_memory_allocated()` on CUDA (this process ran nothing else) and
peak RSS (VmHWM) on CPU. Run by gpu_check.py, one process per run:

    python benchmarks/gpu_finetune.py --side slmforge --method lora --model DIR --data FILE
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from finetune_throughput import _encoded, _peak_rss_mib

LORA = {"r": 16, "alpha": 32}


def peak_memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mib()


def run_slmforge(args: argparse.Namespace) -> dict:
    from slmforge import progress
    from slmforge.artifacts import read_manifest
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.train.sft import finetune

    progress.configure("plain", quiet=True)
    out = Path(args.work) / f"slmforge-{args.method}"
    cfg = FinetuneConfig(
        model=args.model,
        data=args.data,
        out=out,
        method=args.method,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        lr=1e-4,
        samples=0,
        log_every=args.steps,
        force=True,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        device=args.device,
        precision="bf16",
    )
    start = time.perf_counter()
    finetune(cfg)
    wall = time.perf_counter() - start
    metrics = read_manifest(out).metrics
    shutil.rmtree(out, ignore_errors=True)  # a full 3.8B model is 8-15 GB of disk
    return {
        "tokens_per_s": metrics["tokens_per_s"],
        "train_wall_s": round(wall, 2),
        "peak_mib": peak_memory_mib(args.device),
    }


def run_baseline(args: argparse.Namespace) -> dict:
    """Hugging Face `Trainer` (+ PEFT for LoRA) on the same tokenized examples."""
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer

    tokenizer, encoded = _encoded(args.model, args.data, args.max_seq_len)
    rows = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in encoded
    ]
    # LoRA trains over a bf16 base; full fine-tuning keeps fp32 master weights (as slmforge).
    dtype = torch.bfloat16 if args.method == "lora" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    if args.method == "lora":
        model = _with_lora(model)
    seen = {"tokens": 0}

    class CountingTrainer(Trainer):
        """Counts the real tokens of the batches trained on (not in the collator: the data
        loader fetches one batch ahead), as finetune_throughput.py's baseline does."""

        def training_step(self, model, inputs, *rest, **kwargs):
            seen["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *rest, **kwargs)

    trainer = CountingTrainer(
        model=model,
        args=_training_arguments(args),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return {
        "tokens_per_s": seen["tokens"] / wall,
        "train_wall_s": round(wall, 2),
        "peak_mib": peak_memory_mib(args.device),
    }


def _with_lora(model):
    from peft import LoraConfig, get_peft_model

    from slmforge.train.methods import DEFAULT_TARGETS

    config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules=DEFAULT_TARGETS[model.config.model_type],  # slmforge's defaults
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _training_arguments(args: argparse.Namespace):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(args.work) / f"baseline-{args.method}"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-4,
        logging_steps=args.steps,
        report_to=[],
        save_strategy="no",
        use_cpu=args.device == "cpu",
        bf16=True,
        optim="adamw_torch",  # slmforge's optimizer: torch.optim.AdamW
        dataloader_num_workers=0,
        disable_tqdm=True,
        lr_scheduler_type="cosine",
        remove_unused_columns=False,
        seed=42,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["slmforge", "baseline"], required=True)
    parser.add_argument("--method", choices=["lora", "full"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    runner = run_slmforge if args.side == "slmforge" else run_baseline
    print(json.dumps(runner(args)))


if __name__ == "__main__":
    main()
