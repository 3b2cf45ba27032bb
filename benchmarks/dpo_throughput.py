"""DPO throughput, peak memory and loss agreement: slmforge vs TRL's `DPOTrainer`.

Both train the same LoRA with DPO (same model, pairs, batch order, batch size, max length,
beta, lr, constant schedule, no warm-up, LoRA rank/alpha/targets, dropout 0, seed, fp32, torch
threads), each in its own subprocess so peak RSS (VmHWM) is per run. The reference model is
the base with the adapter switched off on both sides (TRL: `ref_model=None` with a PEFT
`LoraConfig`; slmforge: its adapter methods always do so). The runs:

  trl               `DPOTrainer`, fed conversational `prompt`/`chosen`/`rejected` rows in
                    slmforge's batch order (`train_sampling_strategy="sequential"`), fp32
                    (`bf16=False`) and without gradient checkpointing, as slmforge trains
  slmforge          `slmforge finetune --objective dpo --no-group-by-length --lr-scheduler
                    constant --precision fp32`: the same batches as `trl`
  slmforge-grouped  the same with length-grouped batches (slmforge's default; other batches,
                    so its losses are not compared)
  trl-orpo          TRL's experimental `ORPOTrainer` (text rows, the same order, options and
                    LoRA; --orpo-lambda is its `beta`), and
  slmforge-orpo     `--objective orpo`: speed and memory compare; the losses differ by
                    definition (TRL's NLL term also covers the prompt tokens, averaged over the
                    batch's tokens, and it appends an EOS token), so they are shown, not judged
  slmforge-unshared `--no-share-prefix` (matters where a micro-batch's pairs open alike,
                    e.g. with one system prompt)

Agreement checks, printed before the figures: TRL tokenizes the conversational rows itself,
and the token ids and trained (completion) positions of every pair are compared with
slmforge's (`train/preference.py`); the initial LoRA weights of both runs are compared (both
seed torch before `get_peft_model`), and the first step's loss is log 2 on both (the policy
equals the reference). Then the per-step losses of the first 10 steps and their largest
relative difference, tokens/s (real tokens of chosen and rejected sequences, steps 2..N, timed
alike by `StepClock`), and peak RSS with the ratios slmforge / TRL. --repeat N runs each N
times, interleaved, and reports the median speeds. Use --threads 1 on a shared machine
(docs/benchmarks.md). Run:

    .venv/bin/python benchmarks/dpo_throughput.py --threads 1     # the tiny llama (built once)
    .venv/bin/python benchmarks/dpo_throughput.py --threads 1 --model .cache/bench/small-llama-p60
    .venv/bin/python benchmarks/dpo_throughput.py --threads 1 --runs trl-orpo,slmforge-orpo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from finetune_throughput import StepClock, _peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
RUNS = ("trl", "slmforge")
EXTRA_RUNS = ("slmforge-grouped", "trl-orpo", "slmforge-orpo", "slmforge-unshared")
COMPARED_STEPS = 10
LORA = {"r": 16, "alpha": 32}
TRL_PAIRS = "trl-pairs.jsonl"  # the pairs in slmforge's batch order, in TRL's shape
TRL_TOKENS = "trl-tokens.json"  # what TRL made of them
TRL_TEXT_PAIRS = "trl-text-pairs.jsonl"  # the same as text, for TRL's ORPO trainer
BASELINES = {"trl-orpo": "trl-orpo", "slmforge-orpo": "trl-orpo"}  # ratios against (else trl)


def adapter_digest(model) -> str:
    """sha256 of the LoRA weights in name order: equal digests, equal initial adapters."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.encode())
            digest.update(param.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_slmforge(args: argparse.Namespace) -> dict:
    from slmforge import progress
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.train import loop, sft

    progress.configure("plain", quiet=True)
    clock, timed = StepClock(), {}
    real_step, real_fit = loop.train_step, sft.fit

    def train_step(plan, micro_batches, window):
        clock.step(sum(plan.objective.row_tokens(row) for mb in micro_batches for row in mb))
        return real_step(plan, micro_batches, window)

    def fit(plan, log):
        timed["initial_adapter"] = adapter_digest(plan.model)
        real_fit(plan, log)
        timed.update(clock.stop())

    loop.train_step, sft.fit = train_step, fit
    out = Path(args.work) / args.child
    orpo = args.child == "slmforge-orpo"
    cfg = FinetuneConfig(
        model=args.model,
        data=args.data,
        out=out,
        objective="orpo" if orpo else "dpo",
        **({"orpo_lambda": args.orpo_lambda} if orpo else {"beta": args.beta}),
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        group_by_length=args.child == "slmforge-grouped",
        share_prefix=args.child != "slmforge-unshared",
        precision="fp32",
        lr=args.lr,
        lr_scheduler="constant",
        warmup_steps=0,
        samples=0,
        log_every=1,
        force=True,
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules=args.targets.split(","),
        seed=args.seed,
    )
    sft.finetune(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {**timed, "peak_rss_mib": _peak_rss_mib(), "losses": losses}


def run_trl(args: argparse.Namespace) -> dict:
    """TRL's DPOTrainer on the same pairs, in the same order, tokenized by TRL itself (what
    it made of them goes to TRL_TOKENS for the parent to compare)."""
    from trl import DPOConfig, DPOTrainer

    def tokens(batch) -> int:  # chosen and rejected rows, one padded batch
        return int(batch["attention_mask"].sum())

    def save_tokens(trainer) -> None:
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        rows = [{key: row[key] for key in keys} for row in trainer.train_dataset]
        (Path(args.work) / TRL_TOKENS).write_text(json.dumps(rows))

    config = DPOConfig(beta=args.beta, **_trl_options(args))
    return _trl_run(args, DPOTrainer, config, TRL_PAIRS, tokens, save_tokens, ref_model=None)


def run_trl_orpo(args: argparse.Namespace) -> dict:
    """TRL's experimental ORPOTrainer on text rows (the chat template applied by us: it takes
    no conversations). Its loss is not slmforge's: the NLL term covers the prompt tokens too
    and averages over the batch's tokens, and it appends an EOS token to each answer."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    def tokens(batch) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    config = ORPOConfig(beta=args.orpo_lambda, **_trl_options(args))  # beta: ORPO's lambda
    return _trl_run(args, ORPOTrainer, config, TRL_TEXT_PAIRS, tokens, lambda _trainer: None)


def _trl_options(args: argparse.Namespace) -> dict:
    """What both TRL configs share: slmforge's settings (fp32, no gradient checkpointing:
    TRL's defaults are bf16 and checkpointing), the batch order as given, no logging cost."""
    return {
        "output_dir": str(Path(args.work) / args.child),
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.steps,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_length": args.max_seq_len,
        "seed": args.seed,
        "bf16": False,
        "gradient_checkpointing": False,
        "train_sampling_strategy": "sequential",
        "logging_steps": args.steps,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def _trl_run(args, trainer_class, config, rows_file, tokens, before_training, **extra) -> dict:
    """Train with a TRL trainer and the same LoRA (seeded by the trainer before
    `get_peft_model`, as slmforge seeds), timed like slmforge, each step's loss unrounded."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in (Path(args.work) / rows_file).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    clock, losses = StepClock(), []

    class Timed(trainer_class):
        def training_step(self, model, inputs, *rest, **kwargs):
            clock.step(tokens(inputs))
            loss = super().training_step(model, inputs, *rest, **kwargs)
            losses.append(float(loss))
            return loss

    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules=args.targets.split(","),
        task_type="CAUSAL_LM",
    )
    trainer = Timed(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        **extra,
    )
    initial = adapter_digest(trainer.model)
    before_training(trainer)
    trainer.train()
    return {
        **clock.stop(),
        "initial_adapter": initial,
        "peak_rss_mib": _peak_rss_mib(),
        "losses": losses,
        "optimizer": str(config.optim),
    }


def _child(kind: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        *("--model", args.model, "--data", str(args.data), "--work", str(args.work)),
        *("--steps", str(args.steps), "--batch-size", str(args.batch_size)),
        *("--max-seq-len", str(args.max_seq_len), "--beta", str(args.beta)),
        *("--lr", str(args.lr), "--seed", str(args.seed), "--targets", args.targets),
        *("--orpo-lambda", str(args.orpo_lambda)),
        *(["--threads", str(args.threads)] if args.threads else []),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _slmforge_pairs(args: argparse.Namespace):
    """The pairs as slmforge reads and encodes them for this run, and its batch order."""
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.models.load import load_tokenizer
    from slmforge.train.collate import epoch_order
    from slmforge.train.preference import encode_pairs, read_pairs

    cfg = FinetuneConfig(
        model=args.model,
        data=args.data,
        out=Path(args.work) / "unused",
        objective="dpo",
        max_seq_len=args.max_seq_len,
        seed=args.seed,
    )
    tokenizer = load_tokenizer(args.model)
    examples = read_pairs(args.data, cfg, tokenizer)
    encoded = encode_pairs(tokenizer, examples, cfg)
    if len(encoded) != len(examples):
        raise SystemExit("some pairs were skipped: the order below would not be slmforge's")
    # slmforge's order without length grouping: a seeded permutation per epoch, ragged tail
    # dropped (`train/loop.py`), as many epochs as the steps need.
    per_epoch = len(encoded) // args.batch_size * args.batch_size
    order: list[int] = []
    for epoch in range(math.ceil(args.steps * args.batch_size / per_epoch)):
        order += epoch_order(len(encoded), args.seed, epoch)[:per_epoch]
    return examples, encoded, order[: args.steps * args.batch_size], tokenizer


def write_trl_pairs(examples, order: list[int], path: Path) -> None:
    """TRL's conversational rows (prompt, chosen, rejected message lists) in batch order."""
    rows = [
        {
            "prompt": examples[i].prompt,
            "chosen": examples[i].chosen,
            "rejected": examples[i].rejected,
        }
        for i in order
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_trl_text_pairs(examples, order: list[int], tokenizer, path: Path) -> None:
    """TRL's text rows for its ORPO trainer, which takes no conversations: the prompt with the
    generation prompt, and each answer as the template renders it after that prompt."""
    rows = []
    for i in order:
        prompt = tokenizer.apply_chat_template(
            examples[i].prompt, add_generation_prompt=True, tokenize=False
        )
        row = {"prompt": prompt}
        for side in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(
                getattr(examples[i], f"{side}_messages"), tokenize=False
            )
            row[side] = full[len(prompt) :]
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def token_agreement(encoded, order: list[int], path: Path, tokenizer) -> dict:
    """How TRL's tokenization (prompt_ids + chosen_ids / rejected_ids, the completion trained)
    compares with slmforge's (`encode`: one rendering, labels on the assistant answer and its
    end marker): pairs, pairs with identical token ids, pairs with identical trained
    positions, and the first difference in trained tokens, decoded."""
    trl_rows = json.loads(path.read_text())
    result = {"pairs": len(trl_rows), "same_ids": 0, "same_labels": 0, "example": ""}
    for index, row in zip(order, trl_rows, strict=True):
        ids_ok = labels_ok = True
        for side in ("chosen", "rejected"):
            mine = getattr(encoded[index], side)
            theirs = row["prompt_ids"] + row[f"{side}_ids"]
            ids_ok &= mine.input_ids == theirs
            difference = _trained_difference(mine, len(row["prompt_ids"]), tokenizer)
            labels_ok &= not difference
            result["example"] = result["example"] or difference
        result["same_ids"] += ids_ok
        result["same_labels"] += labels_ok
    return result


def _trained_difference(mine, prompt_len: int, tokenizer) -> str:
    """The tokens one side trains on and the other does not ('' when none): TRL trains every
    token after the prompt, slmforge the tokens its labels keep."""
    from slmforge.train.collate import IGNORE

    only_trl = [
        token
        for i, (token, label) in enumerate(zip(mine.input_ids, mine.labels, strict=True))
        if i >= prompt_len and label == IGNORE
    ]
    only_mine = [
        token
        for i, (token, label) in enumerate(zip(mine.input_ids, mine.labels, strict=True))
        if i < prompt_len and label != IGNORE
    ]
    if not only_trl and not only_mine:
        return ""
    return (
        f"trained by TRL only: {tokenizer.decode(only_trl)!r}, "
        f"by slmforge only: {tokenizer.decode(only_mine)!r}"
    )


def _prepare(args: argparse.Namespace) -> None:
    from bench_models import tiny_model

    from slmforge.train.methods import DEFAULT_TARGETS

    CACHE.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.model = str(tiny_model("llama"))
    if args.data is None:
        from slmforge.data.sample import write_sample

        args.data = write_sample(CACHE / "preference.jsonl", force=True, kind="preference")
    config = json.loads((Path(args.model) / "config.json").read_text())
    args.targets = ",".join(DEFAULT_TARGETS[config["model_type"]])
    args.work = str(CACHE / "dpo-work")
    Path(args.work).mkdir(parents=True, exist_ok=True)


def _median_run(done: list[dict]) -> dict:
    """One figure per run from its repeats: median speeds, the highest peak RSS, the first
    repeat's losses and digests (the runs are deterministic)."""
    return {
        **done[0],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in done),
        "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in done),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in done),
    }


def _report(results: dict[str, dict], agreement: dict) -> None:
    if agreement:
        pairs = agreement["pairs"]
        print(
            f"token ids identical (TRL vs slmforge): {agreement['same_ids']}/{pairs} pairs "
            f"(chosen and rejected); trained positions identical: "
            f"{agreement['same_labels']}/{pairs}"
        )
        if agreement["example"]:
            print(f"  first difference: {agreement['example']}")
    notes = {
        "trl": f"the step-1 loss is log 2 = {math.log(2):.6f}; acceptance: <= 2e-02",
        "trl-orpo": "not judged: TRL's ORPO loss is defined differently",
    }
    for theirs, ours in (("trl", "slmforge"), ("trl-orpo", "slmforge-orpo")):
        if theirs in results and ours in results:
            _compare_losses(theirs, results[theirs], results[ours], notes[theirs])
    print(
        f"{'run':<18}{'tokens/s':>10}{'x':>6}{'tok/CPU-s':>11}{'x':>6}{'peak RSS MiB':>14}{'x':>6}"
    )
    for kind, r in results.items():
        base = results.get(BASELINES.get(kind, "trl"), r)
        print(
            f"{kind:<18}{r['tokens_per_s']:>10.0f}"
            f"{r['tokens_per_s'] / base['tokens_per_s']:>6.2f}"
            f"{r['tokens_per_cpu_s']:>11.0f}"
            f"{r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:>6.2f}"
            f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f}"
        )


def _compare_losses(name: str, trl: dict, mine: dict, note: str) -> None:
    same = "identical" if trl["initial_adapter"] == mine["initial_adapter"] else "DIFFERENT"
    print(
        f"{name}: initial LoRA weights {same} ({trl['initial_adapter']}, {mine['initial_adapter']})"
    )
    print(f"TRL optimizer: {trl['optimizer']}")
    print(f"{'step':>4}{'TRL loss':>12}{'slmforge':>12}{'rel diff':>10}")
    steps = min(COMPARED_STEPS, len(trl["losses"]), len(mine["losses"]))
    worst = 0.0
    for step in range(steps):
        a, b = trl["losses"][step], mine["losses"][step]
        worst = max(worst, abs(b - a) / abs(a))
        print(f"{step + 1:>4}{a:>12.6f}{b:>12.6f}{abs(b - a) / abs(a):>10.2e}")
    print(f"max relative loss difference, steps 1-{steps}: {worst:.2e} ({note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder (default: the tiny llama, built once).")
    parser.add_argument("--data", type=Path, help="Pair file (default: the preference sample).")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta.")
    parser.add_argument("--orpo-lambda", type=float, default=0.1, help="ORPO runs' lambda.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=1, help="Runs of each (median speed).")
    parser.add_argument("--runs", default=",".join(RUNS), help="Comma-separated runs to do.")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--work")
    parser.add_argument("--targets")
    parser.add_argument("--child", choices=RUNS + EXTRA_RUNS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        runner = {"trl": run_trl, "trl-orpo": run_trl_orpo}.get(args.child, run_slmforge)
        print(json.dumps(runner(args)))
        return
    _prepare(args)
    import torch

    examples, encoded, order, tokenizer = _slmforge_pairs(args)
    write_trl_pairs(examples, order, Path(args.work) / TRL_PAIRS)
    write_trl_text_pairs(examples, order, tokenizer, Path(args.work) / TRL_TEXT_PAIRS)
    (Path(args.work) / TRL_TOKENS).unlink(missing_ok=True)
    threads = args.threads or torch.get_num_threads()
    print(
        f"model {args.model}, {len(examples)} pairs, steps {args.steps}, batch {args.batch_size}, "
        f"max_seq_len {args.max_seq_len}, beta {args.beta}, lr {args.lr} constant, LoRA r "
        f"{LORA['r']} alpha {LORA['alpha']} on {args.targets}, seed {args.seed}, fp32, "
        f"torch threads {threads}, {args.repeat} repeat(s)"
    )
    runs: dict[str, list[dict]] = {kind: [] for kind in args.runs.split(",")}
    for _ in range(args.repeat):  # interleaved, so a busy spell on the machine hits every run
        for kind, done in runs.items():
            done.append(_child(kind, args))
            print(f"[bench] {kind}: {json.dumps(done[-1])}", file=sys.stderr, flush=True)
    results = {kind: _median_run(done) for kind, done in runs.items()}
    tokens = Path(args.work) / TRL_TOKENS
    agreement = token_agreement(encoded, order, tokens, tokenizer) if "trl" in results else {}
    _report(results, agreement)


if __name__ == "__main__":
    main()
