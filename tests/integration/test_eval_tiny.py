"""The tiny base model against the same model fine-tuned on slmforge's travel data, on held-out
rows: the fine-tuned one scores higher on F1 and ROUGE-L, and the report says so with intervals.

The adapter is trained once per code version (150 LoRA steps) and kept beside the tiny models in
`.cache/test-models`, under the same lock scheme as conftest.py, so reruns do not train again.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest

import slmforge
from conftest import REPO, _cache_key, _locked
from slmforge.artifacts import read_manifest
from slmforge.config.evaluate import EvalConfig
from slmforge.evaluate.runner import run_eval

pytestmark = pytest.mark.integration

SYSTEM = "You are a helpful travel assistant."
# The plain shuffled order this eval test was calibrated on (length grouping trains a slightly
# different adapter, whose ROUGE-L gain is then not significant on 16 rows).
TRAINING = {"max_steps": 150, "lr": 5e-3, "batch_size": 8, "seed": 11, "group_by_length": False}


def _adapter_key() -> str:
    digest = hashlib.sha256(f"{_cache_key()} {TRAINING}".encode())
    for source in sorted((Path(slmforge.__file__).parent / "train").glob("*.py")):
        digest.update(ast.dump(ast.parse(source.read_text(encoding="utf-8"))).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def travel(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The travel sample split into train and 16 held-out rows, and a LoRA adapter trained on the
    train part (cached)."""
    from slmforge.config.data import SplitConfig
    from slmforge.config.finetune import FinetuneConfig
    from slmforge.data.sample import write_sample
    from slmforge.data.split import run_split
    from slmforge.train.sft import finetune

    root = tmp_path_factory.mktemp("travel")
    split = run_split(
        SplitConfig(
            input=write_sample(root / "travel.jsonl"),
            out_dir=root / "split",
            validation=0,
            test=16,
            seed=3,
            system_prompt=SYSTEM,
        )
    )
    base = tiny_model("llama")
    cache = REPO / ".cache" / "test-models" / f"eval-adapter-{_adapter_key()}"
    with _locked(cache.parent / f"{cache.name}.lock"):
        if read_manifest(cache) is None:
            config = FinetuneConfig(
                model=str(base),
                data=Path(split["train"]),
                out=cache,
                target_modules=["all-linear"],
                samples=0,
                force=True,
                **TRAINING,
            )
            finetune(config)
    return {"base": base, "adapter": cache, "test": Path(split["test"])}


def test_fine_tuned_beats_base_on_f1_and_rouge_l_with_intervals(travel, tmp_path):
    cfg = EvalConfig(
        data=travel["test"],
        target=[f"base={travel['base']}", f"tuned={travel['base']}+{travel['adapter']}"],
        metrics=["f1", "rougeL", "length"],
        out=tmp_path / "eval",
        max_tokens=40,
    )
    summary = run_eval(cfg).summary
    base, tuned = (summary["results"][t]["metrics"] for t in ("base", "tuned"))
    for metric in ("f1", "rougeL"):
        assert tuned[metric]["mean"] > base[metric]["mean"], metric
        assert tuned[metric]["ci_low"] <= tuned[metric]["mean"] <= tuned[metric]["ci_high"]
    significant = {(f["better"], f["metric"]) for f in summary["findings"]}
    assert ("tuned", "f1") in significant and ("tuned", "rougeL") in significant, summary[
        "findings"
    ]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "tuned is better than base on f1: tuned - base = +" in report
    assert "tuned is better than base on rougeL" in report and "(95% CI +" in report
    rows = [json.loads(x) for x in (tmp_path / "eval" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["prompt"][0] == {"role": "system", "content": SYSTEM}
    perf = summary["results"]["tuned"]["performance"]
    assert perf["tokens_per_s"]["n"] > 0 and perf["completion_tokens"]["sum"] > 0
