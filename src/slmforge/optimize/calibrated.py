"""The calibrated quantization methods (`--int4-algo gptq|awq`) by name: what each computes
from the calibration windows before the builder runs, and what it hands the builder.

- gptq: packed `MatMulNBits` weights for every decoder-layer Linear (optimize/gptq.py), saved
  to a scratch safetensors file that the streaming quantization pass reads instead of rounding
  (optimize/builder_run.py). The builder reads the untouched source checkpoint.
- awq: the source with AWQ scales applied (optimize/awq.py), saved as a scratch checkpoint that
  the builder reads and rounds to nearest as usual.
Either way the build has the MatMulNBits layout every other int4/int8 build has, so the runtime,
the batched server and switchable adapters do not know the difference.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.optimize import calibration


@dataclass
class BuildInput:
    """What the builder reads: a checkpoint folder, and packed weights to use, if any."""

    source: Path
    weights: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    bits: int
    block: int
    symmetric: bool
    trust_remote_code: bool


def _gptq(source: Path, windows: list[list[int]], settings: Settings, scratch: Path) -> BuildInput:
    from safetensors.torch import save_file

    from slmforge.optimize.gptq import quantize_model

    model = calibration.load_source(source, settings.trust_remote_code)
    packed = quantize_model(model, windows, settings.bits, settings.block, settings.symmetric)
    del model
    weights = scratch / "gptq.safetensors"
    save_file(packed, str(weights))
    return BuildInput(source, weights)


_NOT_COPIED = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")


def _awq(source: Path, windows: list[list[int]], settings: Settings, scratch: Path) -> BuildInput:
    from slmforge.optimize.awq import scale_model

    model = calibration.load_source(source, settings.trust_remote_code)
    alphas = scale_model(model, windows, settings.bits, settings.block, settings.symmetric)
    folder = scratch / "awq-scaled"
    folder.mkdir()
    for path in source.iterdir():  # tokenizer, generation config...: all but the weights
        if path.is_file() and not path.name.endswith(_NOT_COPIED):
            shutil.copy2(path, folder / path.name)
    model.save_pretrained(folder)
    del model
    mean_alpha = sum(alphas.values()) / max(len(alphas), 1)
    return BuildInput(folder, details={"awq_groups": len(alphas), "awq_mean_alpha": mean_alpha})


CalibratedStep = Callable[[Path, list[list[int]], Settings, Path], BuildInput]
CALIBRATED: dict[str, CalibratedStep] = {"gptq": _gptq, "awq": _awq}


def prepare(
    algo: str, source: Path, calib: calibration.Calibration, settings: Settings, scratch: Path
) -> BuildInput:
    """Run `algo` on the calibration windows; the builder's input for the build."""
    progress.info(
        f"{algo}: calibrating on {len(calib.windows)} samples ({calib.tokens} tokens) "
        f"from {calib.path}"
    )
    prepared = CALIBRATED[algo](source, calib.windows, settings, scratch)
    prepared.details = calib.describe() | prepared.details
    return prepared
