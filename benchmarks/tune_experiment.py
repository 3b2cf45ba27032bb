"""Does tuning (and augmenting) pay? Held-out loss of the default config vs the tuned config vs
the tuned config on augmented data, on slmforge's sample data with the `small` Llama.

Everything runs through the CLI exactly as a user types it, in one work folder:

1. `slmforge data sample`, then `data split` into train / validation / test (15% / 15%);
2. `slmforge tune` on train, objective = validation eval loss, the default finetune options
   enqueued as trial 0 (so the study shows the default next to what it finds);
3. three `slmforge finetune` runs measured on the untouched test split (eval loss does not
   change training, so each is the same run as the one it names, measured on test):
   the default options, `best.yaml`, and `best.yaml` on train + its noise augmentation
   (`slmforge data augment --strategy noise`, offline: no teacher is reachable here).

Every run has the same steps (compute-matched). Run (about 10 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/tune_experiment.py
    .venv/bin/python benchmarks/tune_experiment.py --trials 10 --steps 40   # the defaults
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from bench_models import CACHE, log, slmforge_command, small_model

WORK = CACHE / "tune-experiment"
DEFAULTS = {"lr": 2.0e-4, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
SPACE = {
    "params": {
        "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
        "lora_r": {"type": "categorical", "choices": [8, 16, 32]},
        "lora_alpha": {"type": "categorical", "choices": [16, 32, 64]},
        "lora_dropout": {"type": "float", "low": 0.0, "high": 0.1},
    },
    "first": [DEFAULTS],
}


def slmforge(*args: str) -> None:
    command = [slmforge_command(), "--log-format", "plain", "--quiet", *args]
    log("running " + " ".join(command))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def eval_loss(adapter: Path) -> float:
    manifest = json.loads((adapter / "slmforge.json").read_text())
    return float(manifest["metrics"]["eval_loss_final"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--model", type=Path, help="another model folder (default: `small`)")
    args = parser.parse_args()
    started = time.perf_counter()
    model = args.model or small_model()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    slmforge("data", "sample", "--out", str(work / "travel.jsonl"), "--force")
    split = work / "split"
    slmforge(
        *("data", "split", str(work / "travel.jsonl"), "--out-dir", str(split)),
        *("--validation", "0.15", "--test", "0.15", "--seed", "7", "--force"),
    )
    base = {
        "max_steps": args.steps,
        "eval_every": max(1, args.steps // 4),
        "batch_size": 4,
        "max_seq_len": 256,
        "samples": 0,
        "seed": 42,
    }
    (work / "base.yaml").write_text(yaml.safe_dump(base))
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    tuned_at = time.perf_counter()
    slmforge(
        *("tune", "--model", str(model), "--data", str(split / "train.jsonl")),
        *("--eval-data", str(split / "validation.jsonl"), "--space", str(work / "space.yaml")),
        *("--base-config", str(work / "base.yaml"), "--trials", str(args.trials)),
        *("--out", str(work / "tune"), "--force"),
    )
    tune_s = time.perf_counter() - tuned_at
    slmforge(
        *("data", "augment", str(split / "train.jsonl"), "--out", str(work / "augmented.jsonl")),
        *("--strategy", "noise", "--copies", "1", "--seed", "0", "--force"),
    )
    test = str(split / "test.jsonl")
    defaults = work / "default.yaml"
    defaults.write_text(yaml.safe_dump({**base, **DEFAULTS}))
    runs = {
        "default config": (defaults, split / "train.jsonl"),
        "tuned config": (work / "tune" / "best.yaml", split / "train.jsonl"),
        "tuned + augmented data": (work / "tune" / "best.yaml", work / "augmented.jsonl"),
    }
    results = {}
    for name, (config, data) in runs.items():
        out = work / name.replace(" ", "-").replace("+", "plus")
        slmforge(
            *("finetune", "--config", str(config), "--model", str(model)),
            *("--data", str(data), "--eval-data", test, "--out", str(out), "--force"),
        )
        results[name] = eval_loss(out)
    study = json.loads((work / "tune" / "slmforge.json").read_text())
    summary = {
        "test_eval_loss": results,
        "validation_eval_loss": {
            "default config (trial 0)": _trial_value(work / "tune" / "trials.csv", 0),
            "tuned config (best trial)": study["metrics"]["best_eval_loss"],
        },
        "best_params": study["details"]["best_params"],
        "trials": {k: v for k, v in study["metrics"].items() if k.startswith("trials_")},
        "tune_seconds": round(tune_s),
        "total_seconds": round(time.perf_counter() - started),
        "steps": args.steps,
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    baseline = results["default config"]
    for name, loss in results.items():
        print(f"{name:>24}: test eval loss {loss:.4f}  ({loss / baseline:.3f}x default)")


def _trial_value(trials_csv: Path, number: int) -> float | None:
    import csv

    with open(trials_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["trial"]) == number and row["value"]:
                return float(row["value"])
    return None


if __name__ == "__main__":
    sys.exit(main())
