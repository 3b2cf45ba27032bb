"""Local model specs: which engine a folder or hub id runs on, with which adapters.

One set of rules for every entry point (`slmforge chat`, `eval`, `app`, `serve`, deployments):

- an ONNX folder (`genai_config.json`, or a manifest of kind `onnx_model`) runs on ONNX Runtime
  with its `.onnx_adapter` files; `+NAME` selects one of them (or adds an `.onnx_adapter` file);
- a GGUF folder (`optimize --format gguf`) runs on llama.cpp (llama-cpp-python) with its GGUF
  LoRA files; `+NAME` selects one;
- an adapter folder (`adapter_config.json`) runs its base model with that adapter;
- any other folder or hub id runs on PyTorch; `+ADAPTER_DIR` loads and selects a LoRA folder.

`plan_local` checks all of this without loading anything, so a bad spec is a one-line error
before a socket is bound or a model is read; `load_local` builds the engine the plan names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmforge.artifacts import read_manifest
from slmforge.errors import InputError
from slmforge.models.load import adapter_base, looks_like_path
from slmforge.runtime.engine import Engine, GenParams, Message

EngineKind = Literal["auto", "torch", "onnx"]
DEFAULT_ADAPTER = "default"  # the name of the adapter a spec selects (`FOLDER+ADAPTER_DIR`)


@dataclass(frozen=True)
class LocalModel:
    """A checked local spec: what to load (`base`, on `kind`), which adapters by name (PyTorch
    adapter folders or `.onnx_adapter` files), and the one requests use when they name none."""

    base: str
    kind: Literal["torch", "onnx", "gguf"]
    adapters: dict[str, str] = field(default_factory=dict)
    selected: str | None = None
    adapter_folder: Path | None = None  # set when the spec named an adapter folder itself


def detect_kind(folder: Path) -> Literal["torch", "onnx", "gguf"]:
    """The engine kind of a folder: "onnx" for an ONNX model folder, "gguf" for a GGUF folder,
    else "torch"."""
    from slmforge.runtime.llamacpp_engine import is_gguf_folder

    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None and manifest.kind == "onnx_model":
        return "onnx"
    if is_gguf_folder(folder):
        return "gguf"
    return "onnx" if (folder / "genai_config.json").is_file() else "torch"


def _check_kind(model: str, wanted: EngineKind, detected: str) -> None:
    if wanted == "onnx" and detected != "onnx":
        raise InputError(f"{model} is not an ONNX model folder; make one with slmforge optimize")
    if wanted == "torch" and detected != "torch":
        raise InputError(f"{model} is an {detected.upper()} model folder; leave --engine auto")


def _check_adapter_paths(adapters: Mapping[str, str | Path], kind: str) -> None:
    for name, value in adapters.items():
        path = Path(value)
        if kind == "onnx" and not (path.is_file() and path.suffix == ".onnx_adapter"):
            raise InputError(f"--adapter {name}={path}: expected an .onnx_adapter file")
        if kind == "torch" and not (path / "adapter_config.json").is_file():
            raise InputError(f"--adapter {name}={path}: not a LoRA adapter folder")
        if kind == "gguf" and not (path.is_file() and path.suffix == ".gguf"):
            raise InputError(f"--adapter {name}={path}: expected a GGUF LoRA file (.gguf)")


def plan_local(
    model: str,
    adapter: str | None = None,
    *,
    engine: EngineKind = "auto",
    adapters: Mapping[str, str | Path] | None = None,
    select: bool = True,
) -> LocalModel:
    """Check a local spec without loading it. `adapter` is the `+ADAPTER` part of a spec,
    `adapters` are named adapters to load as well (`serve --adapter NAME=PATH`). With `select`
    an adapter folder given as the model is selected under the name "default" (one engine for
    one user); without it, it is loaded under its folder's name (a server lists each adapter
    as a model of its own)."""
    folder = Path(model)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{model}: expected a model folder, not a file")
    kind = detect_kind(folder) if folder.is_dir() else "torch"
    _check_kind(model, engine, kind)
    named = dict(adapters or {})
    _check_adapter_paths(named, kind)
    if not folder.exists() and looks_like_path(model):
        raise InputError(f"{model}: no such model folder (and not a hub id like 'org/name')")
    found = {name: str(path) for name, path in named.items()}
    if kind == "onnx":
        return _plan_onnx(folder, adapter, found)
    if kind == "gguf":
        return _plan_gguf(folder, adapter, found)
    return _plan_torch(model, adapter, found, select)


def _plan_gguf(folder: Path, adapter: str | None, found: dict[str, str]) -> LocalModel:
    from slmforge.runtime.llamacpp_engine import gguf_files

    known = gguf_files(folder)[1] | found
    if adapter is not None and adapter not in known:
        names = ", ".join(known) or "none"
        raise InputError(f"{folder} has no adapter {adapter!r} (known: {names})")
    return LocalModel(str(folder), "gguf", known, adapter)


def _plan_onnx(folder: Path, adapter: str | None, found: dict[str, str]) -> LocalModel:
    from slmforge.runtime.onnx_engine import default_adapters

    known = default_adapters(folder) | found
    if adapter is not None and adapter not in known:
        path = Path(adapter)
        if not (path.is_file() and path.suffix == ".onnx_adapter"):
            names = ", ".join(known) or "none"
            raise InputError(f"{folder} has no adapter {adapter!r} (known: {names})")
        known[path.stem], adapter = str(path), path.stem
    return LocalModel(str(folder), "onnx", known, adapter)


def _plan_torch(model: str, adapter: str | None, found: dict[str, str], select: bool) -> LocalModel:
    folder = Path(model)
    if adapter is None and (folder / "adapter_config.json").is_file():
        name = DEFAULT_ADAPTER if select else folder.name
        adapters = {name: model, **found}
        return LocalModel(adapter_base(folder), "torch", adapters, name if select else None, folder)
    if adapter is None:
        return LocalModel(model, "torch", found)
    if not Path(adapter).is_dir():
        raise InputError(f"adapter folder not found: {adapter}")
    return LocalModel(model, "torch", {DEFAULT_ADAPTER: adapter, **found}, DEFAULT_ADAPTER)


def load_local(plan: LocalModel, *, max_batch: int = 1, **torch_options: Any) -> Any:
    """The engine a plan names: a `LocalEngine`, wrapped in `AdapterSelected` when the plan
    selects an adapter. `max_batch` > 1 lets an ONNX model decode that many requests together;
    `torch_options` (device, allow_pickle, ...) go to `TorchEngine`."""
    # imported here so remote use never pays for (or needs) torch or onnxruntime
    if plan.kind == "onnx":
        from slmforge.runtime.onnx_engine import OnnxEngine

        engine: Any = OnnxEngine(plan.base, plan.adapters, max_batch=max_batch)
    elif plan.kind == "gguf":
        from slmforge.runtime.llamacpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(plan.base, plan.adapters)
    else:
        from slmforge.runtime.torch_engine import TorchEngine

        if plan.adapters:
            torch_options = {"adapters": plan.adapters, **torch_options}
        engine = TorchEngine(plan.base, **torch_options)
    return engine if plan.selected is None else AdapterSelected(engine, plan.selected)


class AdapterSelected:
    """An engine that uses `adapter` for requests that name none (for PATH+ADAPTER)."""

    def __init__(self, engine: Any, adapter: str) -> None:
        self.engine = engine
        self.adapter = adapter
        self.name = f"{engine.name}+{adapter}"

    def chat(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Any]:
        return self.engine.chat(messages, params, adapter or self.adapter)

    def adapters(self) -> list[str]:
        return self.engine.adapters()


def unwrap(engine: Engine) -> tuple[Engine, str | None]:
    """The engine under a selection and the adapter it selects (None: the base model)."""
    if isinstance(engine, AdapterSelected):
        return engine.engine, engine.adapter
    return engine, None
