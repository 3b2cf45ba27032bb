"""Preference tuning quality: held-out reward accuracy of DPO and ORPO, and the F1 of their
answers against the SFT-only adapter's (issue 23's acceptance), on the tiny pretrained llama.

1. data   the preference sample (`slmforge data sample --kind preference`: each travel prompt's
          own answer preferred, another row's answer not), split by prompt (`slmforge data
          split`) into train and held-out pairs; the supervised form of each part (the prompt
          and its preferred answer) for SFT and for eval
2. sft    LoRA SFT on the train part's supervised form: the SFT-only adapter, merged (--merge)
3. dpo    DPO LoRA on the merged SFT model (reference: that model, the adapter switched off),
   dpo-nll the same with --dpo-nll-weight (the chosen answer's NLL beside the DPO loss: RPO),
   orpo   ORPO LoRA likewise, and orpo-base: ORPO LoRA on the pretrained base (ORPO's
          single-stage use); all on the train pairs with --eval-data the held-out pairs:
          eval_reward_accuracy at step 0, every --eval-every steps and at the end
   sft-more the control: a second SFT LoRA on the merged SFT model, as many steps as the
          preference runs (--pref-steps) at --sft-more-lr, on the train part's supervised
          form: what the extra steps give without any preference signal
4. eval   `slmforge eval` (f1, rougeL; no judge) of sft-only, sft_sft, sft_dpo, sft_dpo_nll,
          sft_orpo and orpo_only on the held-out prompts against their preferred answers: means
          with 95% bootstrap intervals and the paired comparisons with the SFT-only adapter

--model picks the base: `tiny` (the 0.9M-parameter tiny llama, the default), `bench` (the
4.2M-parameter reference llama of the quantization benchmark, `bench_models.reference_model`:
built once, ~12 minutes on one core) or a model folder. Each model and seed works in its own
folder under .cache/bench/preference-quality/, and writes its figures to results[-TAG].json there.

Everything runs through the library entry points the CLI calls (`finetune`, `run_split`,
`run_eval`). Run:

    .venv/bin/python benchmarks/preference_quality.py --threads 1
    .venv/bin/python benchmarks/preference_quality.py --threads 1 --model bench --heldout 0.4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
RUNS = ("sft-more", "dpo", "dpo-nll", "orpo", "orpo-base")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def prepare_data(work: Path, heldout: float, seed: int) -> dict[str, Path]:
    """Train and held-out pairs, and their supervised form (messages rows)."""
    from slmforge.config.data import SplitConfig
    from slmforge.data.preference import read_preference_examples
    from slmforge.data.sample import write_sample
    from slmforge.data.split import run_split

    pairs = write_sample(work / "pairs.jsonl", force=True, kind="preference")
    parts = run_split(
        SplitConfig(input=pairs, out_dir=work / "split", validation=heldout, seed=seed, force=True)
    )
    paths = {"train_pairs": parts["train"], "heldout_pairs": parts["validation"]}
    for name in ("train", "heldout"):
        rows = [
            json.dumps({"messages": pair.chosen_messages}) + "\n"
            for pair in read_preference_examples(paths[f"{name}_pairs"])
        ]
        paths[f"{name}_sft"] = work / f"{name}-sft.jsonl"
        paths[f"{name}_sft"].write_text("".join(rows), encoding="utf-8")
    return paths


def train(args: argparse.Namespace, **options) -> tuple[Path, list[dict], float]:
    """One `slmforge finetune` run; returns its artifact, metric records and seconds."""
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.train.sft import finetune

    cfg = FinetuneConfig(
        batch_size=args.batch_size,
        max_seq_len=256,
        lr_scheduler="constant",
        lora_dropout=0.0,
        target_modules=args.targets.split(","),
        seed=args.seed,
        samples=0,
        force=True,
        **options,
    )
    log(f"finetune --objective {cfg.objective} --model {cfg.model} ({cfg.max_steps} steps)")
    started = time.perf_counter()
    out = finetune(cfg)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, records, seconds


def eval_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "eval_loss" in r]


def evaluate(args: argparse.Namespace, work: Path, data: Path, targets: dict[str, str]) -> dict:
    from slmforge.config.evaluate import EvalConfig
    from slmforge.evaluate.runner import run_eval

    cfg = EvalConfig(
        data=data,
        target=[f"{name}={spec}" for name, spec in targets.items()],
        out=work / f"eval{args.tag and '-' + args.tag}",
        metrics=["f1", "rougeL"],
        max_tokens=args.max_tokens,
        baseline="sft-only",
        force=True,
    )
    log(f"eval of {', '.join(targets)} on {data}")
    return run_eval(cfg).summary


def report(runs: dict[str, dict], summary: dict) -> None:
    print(
        f"{'run':<10}{'steps':>6}{'lr':>8}{'train s':>9}   held-out eval (step: reward acc, loss)"
    )
    for name, run in runs.items():
        evals = eval_records(run["records"])
        if name.startswith("sft"):
            cells = [
                f"{r['step']}: token acc {r['eval_token_accuracy']:.3f}, loss {r['eval_loss']:.3f}"
                for r in evals
            ]
        else:
            cells = [
                f"{r['step']}: {r['eval_reward_accuracy']:.3f}, {r['eval_loss']:.3f}" for r in evals
            ]
        print(
            f"{name:<10}{run['steps']:>6}{run['lr']:>8g}{run['seconds']:>9.0f}   "
            + "; ".join(cells)
        )
    print(f"\nslmforge eval on {summary['rows']} held-out prompts (greedy), mean [95% CI]:")
    print(f"{'target':<12}{'f1':>24}{'rougeL':>24}")
    for name, result in summary["results"].items():
        cells = [result["metrics"][m] for m in ("f1", "rougeL")]
        print(f"{name:<12}" + "".join(f"{_ci(c):>24}" for c in cells))
    print(
        f"\npaired, against {summary['comparisons'][0]['b']}: diff of means [95% CI], "
        "wins/ties/losses, permutation p"
    )
    for c in summary["comparisons"]:
        print(
            f"{c['a']:<12}{c['metric']:<8}{_ci(c['diff']):>24}  "
            f"{c['wins']}/{c['ties']}/{c['losses']}  p={c['p_value']:.3f}"
        )


def _ci(estimate: dict) -> str:
    return f"{estimate['mean']:+.3f} [{estimate['ci_low']:+.3f}, {estimate['ci_high']:+.3f}]"


def summarize_seeds(label: str, seeds: list[int], tag: str) -> None:
    """F1 of every target of the given seeds' evals (rows.jsonl) against the SFT-only adapter
    and against the sft-more control (sft_sft), per seed: mean diff [95% CI], wins/ties/
    losses, permutation p."""
    from slmforge.evaluate.stats import compare

    print(f"F1 paired differences ({label}, eval{tag and '-' + tag}): diff [95% CI] w/t/l p")
    for seed in seeds:
        path = CACHE / "preference-quality" / f"{label}-seed{seed}" / f"eval{tag and '-' + tag}"
        rows = [json.loads(line) for line in (path / "rows.jsonl").read_text().splitlines()]
        names = list(rows[0]["targets"])
        scores = {n: [r["targets"][n]["scores"].get("f1") for r in rows] for n in names}
        print(f"seed {seed}, {len(rows)} held-out prompts")
        for name in names:
            cells = [f"{name:<12} f1 {sum(scores[name]) / len(rows):.3f}"]
            for base in ("sft-only", "sft_sft"):
                if name in ("sft-only", base) or base not in scores:
                    continue
                c = compare(name, base, "f1", scores[name], scores[base], True)
                cells.append(
                    f"vs {base} {_ci(c.diff.to_dict())} {c.wins}/{c.ties}/{c.losses} "
                    f"p={c.p_value:.3f}"
                )
            print("  " + "   ".join(cells))


def resolve_model(spec: str) -> str:
    """`tiny`, `bench` or a model folder -> the folder (building a named model once)."""
    from bench_models import reference_model, tiny_model

    if spec == "tiny":
        return str(tiny_model("llama"))
    if spec == "bench":
        return str(reference_model())
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="tiny",
        help="Base model: tiny (0.9M-parameter llama), bench (the 4.2M-parameter reference "
        "llama) or a model folder.",
    )
    parser.add_argument("--heldout", type=float, default=0.2, help="Held-out share of prompts.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=250)
    parser.add_argument("--sft-lr", type=float, default=2e-3)
    parser.add_argument(
        "--sft-eval-every", type=int, help="Steps between the SFT run's held-out evaluations."
    )
    parser.add_argument(
        "--targets",
        default="all-linear",
        help="LoRA target modules of every adapter (comma-separated, or all-linear).",
    )
    parser.add_argument("--pref-steps", type=int, default=100)
    parser.add_argument(
        "--sft-more-lr", type=float, help="The sft-more control's lr (default: --sft-lr)."
    )
    parser.add_argument("--dpo-lr", type=float, default=5e-5)
    parser.add_argument(
        "--dpo-nll-lr", type=float, help="The dpo-nll run's lr (default: --dpo-lr)."
    )
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta.")
    parser.add_argument(
        "--dpo-nll-weight", type=float, default=1.0, help="The dpo-nll run's --dpo-nll-weight."
    )
    parser.add_argument("--orpo-lr", type=float, default=1e-3)
    parser.add_argument(
        "--orpo-lambda",
        type=float,
        default=1.0,
        help="ORPO's odds-ratio weight (slmforge's default 0.1 barely moves reward accuracy here).",
    )
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"Runs after the SFT one, comma-separated, of: {', '.join(RUNS)}.",
    )
    parser.add_argument(
        "--reuse-sft",
        action="store_true",
        help="Keep the SFT adapter a previous run of this model and seed left (to try "
        "preference settings; the SFT settings must be the same).",
    )
    parser.add_argument(
        "--tag", default="", help="Suffix of this invocation's eval folder and results file."
    )
    parser.add_argument(
        "--summarize",
        metavar="SEEDS",
        help="Train nothing: print the F1 comparisons (against sft-only and the sft-more "
        "control) of the evals these seeds (comma-separated) left for --model and --tag.",
    )
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--max-tokens", type=int, default=96, help="Most new tokens per answer.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    chosen = args.runs.split(",") if args.runs else []
    if unknown := sorted(set(chosen) - set(RUNS)):
        parser.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    if args.summarize:
        label = args.model if args.model in ("tiny", "bench") else Path(args.model).name
        summarize_seeds(label, [int(s) for s in args.summarize.split(",")], args.tag)
        return
    import torch

    from slmforge import progress

    if args.threads:
        torch.set_num_threads(args.threads)
    progress.configure("plain", quiet=True)
    label = args.model if args.model in ("tiny", "bench") else Path(args.model).name
    args.model = resolve_model(args.model)
    work = CACHE / "preference-quality" / f"{label}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work, args.heldout, args.seed)
    runs: dict[str, dict] = {}
    sft_settings = {
        "model": args.model,
        "data": data["train_sft"],
        "eval_data": data["heldout_sft"],
        "out": work / "sft",
        "max_steps": args.sft_steps,
        "lr": args.sft_lr,
        "eval_every": args.sft_eval_every or args.sft_steps,
        "merge": True,
    }
    if args.reuse_sft and (work / "sft" / "merged" / "slmforge.json").is_file():
        sft, seconds = work / "sft", 0.0
        records = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    else:
        sft, records, seconds = train(args, **sft_settings)
    runs["sft"] = {
        "steps": args.sft_steps,
        "lr": args.sft_lr,
        "seconds": seconds,
        "records": records,
    }
    targets = {"sft-only": f"{args.model}+{sft}"}
    merged = str(sft / "merged")
    # (run, base model, objective, eval target): the SFT control and DPO and ORPO on the SFT
    # model, and ORPO alone on the pretrained base (its single-stage use: SFT and preference
    # in one loss)
    plan = [
        ("sft-more", merged, "sft", "sft_sft"),
        ("dpo", merged, "dpo", "sft_dpo"),
        ("dpo-nll", merged, "dpo", "sft_dpo_nll"),
        ("orpo", merged, "orpo", "sft_orpo"),
        ("orpo-base", args.model, "orpo", "orpo_only"),
    ]
    for name, base, objective, target in plan:
        if name not in chosen:
            continue
        own: dict[str, float] = {}
        if objective == "dpo":
            own["beta"] = args.beta
        elif objective == "orpo":
            own["orpo_lambda"] = args.orpo_lambda
        if name == "dpo-nll":  # DPO plus the chosen answer's NLL (RPO)
            own["dpo_nll_weight"] = args.dpo_nll_weight
        lr = {
            "sft-more": args.sft_more_lr or args.sft_lr,
            "dpo": args.dpo_lr,
            "dpo-nll": args.dpo_nll_lr or args.dpo_lr,
        }.get(name, args.orpo_lr)
        sft_form = objective == "sft"
        out, records, seconds = train(
            args,
            model=base,
            data=data["train_sft" if sft_form else "train_pairs"],
            eval_data=data["heldout_sft" if sft_form else "heldout_pairs"],
            out=work / name,
            objective=objective,
            max_steps=args.pref_steps,
            lr=lr,
            eval_every=args.eval_every,
            **own,
        )
        runs[name] = {"steps": args.pref_steps, "lr": lr, "seconds": seconds, "records": records}
        targets[target] = f"{base}+{out}"
    summary = evaluate(args, work, data["heldout_sft"], targets)
    print(
        f"model {args.model}; pairs: {data['train_pairs']} (train), {data['heldout_pairs']} "
        f"(held out); batch {args.batch_size}, LoRA r16 alpha 32 dropout 0, constant lr, "
        f"beta {args.beta}, dpo_nll_weight {args.dpo_nll_weight}, "
        f"orpo_lambda {args.orpo_lambda}, seed {args.seed}"
    )
    report(runs, summary)
    results = {"args": vars(args), "runs": runs, "eval": summary}
    (work / f"results{args.tag and '-' + args.tag}.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
