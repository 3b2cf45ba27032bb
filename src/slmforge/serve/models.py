"""What a server serves: one local engine, the model name of its base, and its adapters.

The engine follows the artifact: an ONNX folder (`genai_config.json`, manifest kind
`onnx_model`) runs on ONNX Runtime GenAI with its `.onnx_adapter` files; an adapter folder runs
its base model with that adapter; any other model folder or hub id runs on PyTorch. Each adapter
is a model name of its own in `/v1/models`, and a request's `model` picks it, as in vLLM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmforge.artifacts import read_manifest
from slmforge.errors import InputError

EngineKind = Literal["auto", "torch", "onnx"]


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
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None and manifest.kind == "onnx_model":
        return "onnx"
    return "onnx" if (folder / "genai_config.json").is_file() else "torch"


def _check_adapter_paths(adapters: dict[str, Path], engine: str) -> None:
    for name, path in adapters.items():
        if engine == "onnx" and not (path.is_file() and path.suffix == ".onnx_adapter"):
            raise InputError(f"--adapter {name}={path}: expected an .onnx_adapter file")
        if engine == "torch" and not (path / "adapter_config.json").is_file():
            raise InputError(f"--adapter {name}={path}: not a LoRA adapter folder")


def resolve_engine(model: str, engine: EngineKind, adapters: dict[str, Path]) -> str:
    """Check what can be checked before loading anything; returns "torch" or "onnx"."""
    folder = Path(model)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{model}: expected a model folder, not a file")
    detected = detect_engine(folder) if folder.is_dir() else "torch"
    if engine == "onnx" and detected != "onnx":
        raise InputError(f"{model} is not an ONNX model folder; make one with slmforge optimize")
    if engine == "torch" and detected == "onnx":
        raise InputError(f"{model} is an ONNX model folder; serve it with --engine onnx")
    _check_adapter_paths(adapters, detected)
    return detected


def load_served(
    model: str,
    adapters: dict[str, Path] | None = None,
    engine: EngineKind = "auto",
    name: str | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    max_batch: int = 1,
) -> ServedModel:
    """`max_batch` > 1 lets an ONNX model decode that many requests together (continuous
    batching); PyTorch models run one generation at a time."""
    adapters = dict(adapters or {})
    kind = resolve_engine(model, engine, adapters)
    folder = Path(model)
    served_name = name or (folder.name if folder.is_dir() else model)
    if kind == "onnx":
        from slmforge.runtime.onnx_engine import OnnxEngine, default_adapters

        found = default_adapters(folder) | {n: str(p) for n, p in adapters.items()}
        onnx_engine = OnnxEngine(folder, found, max_batch=max_batch)
        return ServedModel(onnx_engine, served_name, {model})
    from slmforge.runtime.torch_engine import TorchEngine

    base = model
    if (folder / "adapter_config.json").is_file():  # an adapter artifact: serve its base with it
        from slmforge.train.merge import base_of

        base = base_of(folder)
        adapters = {folder.name: folder, **adapters}
        served_name = name or Path(base).name
    torch_engine = TorchEngine(base, adapters=adapters, device=device, allow_pickle=allow_pickle)
    return ServedModel(torch_engine, served_name, {model, base})
