"""The calibrated quantization methods (`--int4-algo gptq|awq`) by name: what each computes
from the calibration windows before the builder runs, and what it hands the builder.

- gptq: packed `MatMulNBits` weights for every decoder-layer Linear (optimize/gptq.py), saved
  to a scratch safetensors file that the streaming quantization pass reads instead of rounding
  (optimize/builder_run.py). The builder reads the untouched source checkpoint.
- awq: the source with AWQ scales applied (optimize/awq.py), saved as a scratch checkpoint that
  the builder reads and rounds to nearest as usual. A scaled Linear reads x / s, so every LoRA
  adapter is rewritten to match (`awq.rescale_lora`: A diag(s), and B / s where the producer
  is a Linear) into scratch copies that the builder and the `.onnx_adapter` files are made of.
Either way the build has the MatMulNBits layout every other int4/int8 build has, so the runtime,
the batched server and switchable adapters do not know the difference.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.optimize import calibration
from slmforge.optimize.adapters import AdapterInfo


@dataclass
class BuildInput:
    """What the builder reads: a checkpoint folder, packed weights to use, if any, and the
    adapters to build and convert (the user's, or copies rewritten for the changed base)."""

    source: Path
    adapters: list[AdapterInfo]
    weights: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    bits: int
    block: int
    symmetric: bool
    trust_remote_code: bool


def _gptq(
    source: Path,
    windows: list[list[int]],
    settings: Settings,
    scratch: Path,
    adapters: list[AdapterInfo],
) -> BuildInput:
    from safetensors.torch import save_file

    from slmforge.optimize.gptq import quantize_model

    model = calibration.load_source(source, settings.trust_remote_code)
    packed = quantize_model(model, windows, settings.bits, settings.block, settings.symmetric)
    del model
    weights = scratch / "gptq.safetensors"
    save_file(packed, str(weights))
    return BuildInput(source, adapters, weights)


_NOT_COPIED = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")


def _awq(
    source: Path,
    windows: list[list[int]],
    settings: Settings,
    scratch: Path,
    adapters: list[AdapterInfo],
) -> BuildInput:
    from slmforge.optimize.awq import scale_model

    model = calibration.load_source(source, settings.trust_remote_code)
    applied = scale_model(model, windows, settings.bits, settings.block, settings.symmetric)
    folder = scratch / "awq-scaled"
    folder.mkdir()
    for path in source.iterdir():  # tokenizer, generation config...: all but the weights
        if path.is_file() and not path.name.endswith(_NOT_COPIED):
            shutil.copy2(path, folder / path.name)
    model.save_pretrained(folder)
    del model
    rescaled = [
        _rescaled_adapter(info, applied, scratch / f"awq-adapter-{k}")
        for k, info in enumerate(adapters)
    ]
    mean_alpha = sum(a.alpha for a in applied) / max(len(applied), 1)
    clips = [ratio for a in applied for ratio in a.clip.values()]
    details = {
        "awq_groups": len(applied),
        "awq_mean_alpha": round(mean_alpha, 4),
        "awq_mean_clip": round(sum(clips) / max(len(clips), 1), 4),
    }
    if adapters:
        details["awq_rescaled_adapters"] = [info.name for info in adapters]
    return BuildInput(folder, rescaled, details=details)


def _rescaled_adapter(info: AdapterInfo, applied: list[Any], folder: Path) -> AdapterInfo:
    """A copy of the adapter in `folder` with its LoRA weights matched to the AWQ-scaled base."""
    from safetensors.torch import load_file, save_file

    from slmforge.optimize.awq import rescale_lora

    folder.mkdir()
    weights = "adapter_model.safetensors"
    for path in info.path.iterdir():  # config, tokenizer...; not a manifest of other weights
        if path.is_file() and path.name not in (weights, "slmforge.json"):
            shutil.copy2(path, folder / path.name)
    tensors = rescale_lora(load_file(str(info.path / weights)), applied)
    save_file(tensors, str(folder / weights), metadata={"format": "pt"})
    return replace(info, path=folder)


CalibratedStep = Callable[[Path, list[list[int]], Settings, Path, list[AdapterInfo]], BuildInput]
CALIBRATED: dict[str, CalibratedStep] = {"gptq": _gptq, "awq": _awq}


def prepare(
    algo: str,
    source: Path,
    calib: calibration.Calibration,
    settings: Settings,
    scratch: Path,
    adapters: list[AdapterInfo],
) -> BuildInput:
    """Run `algo` on the calibration windows; the builder's input for the build. `scratch`
    must outlive the build and the writing of the adapters."""
    progress.info(
        f"{algo}: calibrating on {len(calib.windows)} samples ({calib.tokens} tokens) "
        f"from {calib.path}"
    )
    prepared = CALIBRATED[algo](source, calib.windows, settings, scratch, adapters)
    prepared.details = calib.describe() | prepared.details
    return prepared
