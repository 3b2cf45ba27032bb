"""The fit check against reality: parameter and trainable counts of real models, the memory
estimate against the peak memory of a real fine-tuning run of the ~95M-parameter `small` model,
and `slmforge doctor --json`'s estimate of every stage."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.artifacts import read_manifest
from slmforge.config.doctor import FitConfig
from slmforge.config.finetune import FinetuneConfig
from slmforge.doctor.fit import MIB, check_fit, shape_from_config, trainable_params

pytestmark = pytest.mark.integration

# Runs in a fresh process so VmHWM (peak resident memory) is the fine-tune's alone; ru_maxrss
# would survive fork+exec and report the parent's peak.
PEAK_SCRIPT = """
import json, sys
from pathlib import Path
from slmforge.config.finetune import FinetuneConfig
from slmforge.train.sft import finetune
finetune(FinetuneConfig.model_validate_json(sys.argv[1]))
status = Path("/proc/self/status").read_text().splitlines()
peak_kib = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
print(json.dumps({"peak_bytes": peak_kib * 1024}))
"""


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_counts_from_config_match_the_real_models(tiny_models, method: str) -> None:
    from slmforge.models.load import load_causal_lm
    from slmforge.train.methods import get_method

    for arch, folder in tiny_models.items():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        shape = shape_from_config(config, None)
        assert shape.params == read_manifest(folder).metrics["parameters"], arch
        cfg = FinetuneConfig(model=str(folder), data="unused.jsonl", out="unused", method=method)
        model = get_method(method).prepare(load_causal_lm(folder), cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable_params(shape, method, cfg.lora_r) == trainable, arch


def _long_rows(path: Path, rows: int = 8) -> Path:
    """Chats whose answers are far longer than 256 tokens, so every row is cut to exactly
    --max-seq-len and the run is the configuration the estimate is asked about."""
    words = ("the", "old", "town", "has", "narrow", "lanes", "where", "travellers", "eat")
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            answer = " ".join(rng.choice(words) for _ in range(600))
            handle.write(json.dumps({"prompt": f"Describe walk {i}.", "response": answer}) + "\n")
    return path


def test_finetune_estimate_is_within_1_5x_of_the_measured_peak(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")
    from slmforge.models.tiny import build

    model = build("llama", tmp_path / "small", size="small", pretrain_steps=0)
    run = FinetuneConfig(
        model=str(model),
        data=_long_rows(tmp_path / "long.jsonl"),
        out=tmp_path / "adapter",
        method="lora",
        max_steps=2,
        batch_size=2,
        max_seq_len=256,
        samples=0,
        log_every=1,
        device="cpu",
    )
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, run.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]
    assert read_manifest(tmp_path / "adapter").metrics  # the run really trained

    fit = FitConfig(model=str(model), method="lora", batch_size=2, max_seq_len=256, device="cpu")
    estimate = check_fit(fit, "cpu", None).finetune.total
    ratio = estimate / peak
    message = f"estimate {estimate / MIB:.0f} MiB vs measured peak {peak / MIB:.0f} MiB"
    assert 1 / 1.5 <= ratio <= 1.5, message
    # finetune's own check, on the rows it trained on, is recorded for benchmarks to compare
    recorded = read_manifest(tmp_path / "adapter").details["memory_estimate"]
    assert recorded["longest_row_tokens"] == 256 and recorded["batch_size"] == 2
    assert sum(recorded["components_bytes"].values()) == recorded["total_bytes"]
    own = recorded["total_bytes"] / peak
    assert 1 / 1.25 <= own <= 1.25, f"{recorded['total_bytes'] / MIB:.0f} MiB vs {peak / MIB:.0f}"


def test_doctor_json_estimates_every_stage(tiny_models) -> None:
    """`slmforge doctor --model DIR --json`, as a user runs it: merge, optimize and inference
    (chat/serve/eval) beside fine-tuning, each with its total, components and whether it fits."""
    folder = tiny_models["qwen2"]
    result = subprocess.run(
        [sys.executable, "-m", "slmforge.cli.main", "doctor", "--model", str(folder), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    fit = json.loads(result.stdout)["fit"]
    for stage in ("finetune", "merge", "optimize", "inference"):
        assert fit[stage]["total_bytes"] > 0, stage
        assert isinstance(fit[stage]["fits"], bool), stage
    assert fit["inference"]["stages"] == ["chat", "serve", "eval"]
    checkpoint = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert fit["optimize"]["checkpoint_bytes"] == checkpoint
    assert fit["optimize"]["build"]["components_bytes"]["checkpoint (mapped)"] == checkpoint
    ids = [check["id"] for check in json.loads(result.stdout)["checks"]]
    assert ids[-4:] == ["fit.finetune", "fit.merge", "fit.optimize", "fit.inference"]
