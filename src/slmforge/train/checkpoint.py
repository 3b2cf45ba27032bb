"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

A checkpoint is written to a temp folder and renamed, so the latest complete one is always
usable. Only the trainable tensors are saved (the adapter for LoRA), in safetensors; the
optimizer/scheduler/RNG state is loaded back with `weights_only=True`, never full pickle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slmforge.errors import InputError

KEEP_LAST = 2
# Options that may change between an interrupted run and its resume.
RESUMABLE_CHANGES = {
    "resume",
    "force",
    "save_every",
    "log_every",
    "eval_every",
    "nproc",
    "samples",
    "strict_memory",
    "device",
}


@dataclass
class TrainState:
    step: int
    epoch: int
    config: dict[str, Any]


def checkpoint_dir(work: Path) -> Path:
    return work / "checkpoints"


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad
    }


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    work: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState
) -> Path:
    root = checkpoint_dir(work)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:07d}"
    temp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    save_file(trainable_state(model), temp / "trainable.safetensors")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        temp / "state.pt",
    )
    meta = {"step": state.step, "epoch": state.epoch, "config": state.config}
    (temp / "meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(work: Path) -> Path | None:
    found = sorted(checkpoint_dir(work).glob("step-*")) if work.exists() else []
    return found[-1] if found else None


def _config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = (set(saved) | set(current)) - RESUMABLE_CHANGES
    return [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in sorted(keys)
        if saved.get(k) != current.get(k)
    ]


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, config: dict[str, Any]
) -> TrainState:
    """Restore everything into the live objects; refuse if training options changed."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    changes = _config_changes(meta["config"], config)
    if changes:
        raise InputError(
            f"cannot resume from {path}: options changed since it was written "
            f"({'; '.join(changes)}); use the same options, or --force to start over"
        )
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise InputError(f"checkpoint {path} does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return TrainState(step=meta["step"], epoch=meta["epoch"], config=meta["config"])
