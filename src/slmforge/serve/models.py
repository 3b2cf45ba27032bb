"""What a server serves: one local engine, the model name of its base, and its adapters.

The engine follows the artifact, by the resolver's rules (`runtime/local_models.py`): an ONNX
folder runs on ONNX Runtime GenAI with its `.onnx_adapter` files; an adapter folder runs its
base model with that adapter; any other model folder or hub id runs on PyTorch. Each adapter is
a model name of its own in `/v1/models`, and a request's `model` picks it, as in vLLM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmforge.progress import info
from slmforge.runtime.local_models import EngineKind, detect_kind, load_local, plan_local

__all__ = ["EngineKind", "ServedModel", "detect_engine", "load_served", "resolve_engine"]


@dataclass
class ServedModel:
    engine: Any  # runtime.local.LocalEngine
    name: str
    aliases: set[str] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))

    def adapters(self) -> list[str]:
        return self.engine.adapters()

    def resolve(self, model: str) -> str | None:
        """The adapter a request's `model` names (None = the base); KeyError when unknown."""
        if model == self.name or model in self.aliases:
            return None
        if model in self.adapters():
            return model
        raise KeyError(model)

    def model_ids(self) -> list[str]:
        return [self.name, *self.adapters()]


def detect_engine(folder: Path) -> Literal["torch", "onnx"]:
    return detect_kind(folder)


def resolve_engine(model: str, engine: EngineKind, adapters: dict[str, Path]) -> str:
    """Check what can be checked before loading anything; returns "torch" or "onnx"."""
    return plan_local(model, engine=engine, adapters=adapters, select=False).kind


def load_served(
    model: str,
    adapters: dict[str, Path] | None = None,
    engine: EngineKind = "auto",
    name: str | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    max_batch: int = 1,
    prefix_cache_mib: int = 0,
) -> ServedModel:
    """`max_batch` > 1 lets an ONNX model decode that many requests together (continuous
    batching); PyTorch models run one generation at a time. `prefix_cache_mib` > 0 keeps that
    much of the keys and values of prompt prefixes for later requests."""
    plan = plan_local(model, engine=engine, adapters=adapters, select=False)
    folder = Path(model)
    served_name = name or (folder.name if folder.is_dir() else model)
    if plan.kind == "onnx":
        served = ServedModel(load_local(plan, max_batch=max_batch), served_name, {model})
    else:
        if plan.adapter_folder is not None:  # an adapter artifact: serve its base with it
            served_name = name or Path(plan.base).name
        torch_engine = load_local(plan, device=device, allow_pickle=allow_pickle)
        served = ServedModel(torch_engine, served_name, {model, plan.base})
    if prefix_cache_mib and not served.engine.enable_prefix_cache(prefix_cache_mib << 20):
        info(f"{model}: no prefix cache with the {served.engine.name} engine")
    return served
