"""Checks of the software: torch's build, ONNX Runtime (GenAI) and their providers, slmforge's
extras (read from the installed package's metadata, so they can never drift from
pyproject.toml), and the cloud profiles' keys."""

from __future__ import annotations

import json
from importlib import import_module, metadata
from typing import Any
from urllib.parse import unquote, urlparse

from slmforge.doctor.facts import Facts, dist_version
from slmforge.doctor.report import Check, check

EXTRA_PURPOSES = {
    "train": "fine-tuning, merge, tiny models and local chat",
    "onnx": "slmforge optimize (ONNX export, int4) and ONNX inference",
    "serve": "slmforge serve and deploy",
    "eval": "slmforge eval",
    "tune": "slmforge tune (hyperparameter search with Optuna)",
    "scale": "Ray: serve --backend ray, tune --backend ray",
    "cloud": "keeping profile keys in the system keyring",
}
_NOT_STAGES = {"all", "dev", "bench"}  # an umbrella, developer tools, benchmark baselines
# torch CUDA builds by the oldest driver CUDA version to pick them for, newest first; CUDA's
# minor version compatibility runs a 12.x build on any 12.x driver
_TORCH_CUDA_BUILDS = (((12, 8), "cu128"), ((12, 0), "cu126"), ((11, 8), "cu118"))
ORT_FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
GENAI_FLAVOURS = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml")


def install_command(extra: str) -> str:
    """The pip command that installs `extra` into this environment: `-e DIR[extra]` for an
    editable (source checkout) install, `slmforge[extra]` otherwise."""
    try:
        direct = metadata.distribution("slmforge").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct = None
    info = json.loads(direct) if direct else {}
    if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file:"):
        return f"pip install -e '{unquote(urlparse(info['url']).path)}[{extra}]'"
    return f"pip install 'slmforge[{extra}]'"


def _torch_index(driver_cuda: str | None) -> str:
    if driver_cuda:
        have = tuple(int(x) for x in driver_cuda.split(".")[:2])
        for needed, tag in _TORCH_CUDA_BUILDS:
            if have >= needed:
                return f"https://download.pytorch.org/whl/{tag}"
    return "https://download.pytorch.org/whl/cu126 (after updating the NVIDIA driver)"


@check("torch")
def torch_check(facts: Facts) -> Check:
    info = facts.torch
    if info is None:
        return Check(
            "torch",
            "warning",
            "torch is not installed: no fine-tuning, merge or local PyTorch inference",
            install_command("train"),
            {"version": None, "build": None, "cuda_available": False},
        )
    build = f"ROCm {info.hip}" if info.hip else f"CUDA {info.cuda}" if info.cuda else "CPU"
    details = {
        "version": info.version,
        "build": "rocm" if info.hip else "cuda" if info.cuda else "cpu",
        "cuda_version": info.cuda,
        "hip_version": info.hip,
        "cuda_available": info.cuda_available,
        "mps_available": info.mps_available,
    }
    summary = f"torch {info.version} ({build} build)"
    nvidia = facts.accelerator == "cuda" or facts.nvidia_driver
    if nvidia and not info.cuda and not info.hip:
        driver = facts.nvml.cuda if facts.nvml else None
        fix = f"pip install --force-reinstall torch --index-url {_torch_index(driver)}"
        return Check("torch", "error", summary + " on a machine with an NVIDIA GPU", fix, details)
    if nvidia and info.cuda and not info.cuda_available:
        return Check(
            "torch",
            "error",
            summary + ", but torch cannot use the GPU (the driver may be older than the build)",
            "update the NVIDIA driver, or install the torch build for the driver's CUDA version",
            details,
        )
    where = {"cpu": "matches this CPU-only machine", "mps": "MPS available"}
    note = where.get(facts.accelerator, "GPU available" if info.cuda_available else "")
    return Check("torch", "ok", f"{summary}: {note}" if note else summary, details=details)


def _flavours(names: tuple[str, ...]) -> dict[str, str]:
    return {name: v for name in names if (v := dist_version(name)) is not None}


def _import(module: str) -> tuple[Any, str | None]:
    try:
        return import_module(module), None
    except ImportError as exc:
        return None, str(exc).splitlines()[0]


def _runtime_check(
    check_id: str, flavours: dict[str, str], module: str
) -> tuple[Any, Check | None, dict[str, Any]]:
    """Import a runtime that comes in several package flavours; a Check if that failed."""
    details: dict[str, Any] = {"packages": flavours}
    if not flavours:
        summary = f"{module} is not installed: needed for {EXTRA_PURPOSES['onnx']}"
        return None, Check(check_id, "warning", summary, install_command("onnx"), details), details
    if len(flavours) > 1:
        names = " and ".join(flavours)
        fix = f"pip uninstall -y {' '.join(flavours)}, then install the one for your hardware"
        summary = f"{names} are all installed; they share one module and the last one wins"
        return None, Check(check_id, "error", summary, fix, details), details
    loaded, error = _import(module)
    if loaded is None:
        ((name, version),) = flavours.items()
        fix = f"pip install --force-reinstall {name}=={version}"
        summary = f"{name} {version} is installed but does not import: {error}"
        return None, Check(check_id, "error", summary, fix, details), details
    return loaded, None, details


@check("onnxruntime")
def onnxruntime_check(facts: Facts) -> Check:
    flavours = _flavours(ORT_FLAVOURS)
    ort, failed, details = _runtime_check("onnxruntime", flavours, "onnxruntime")
    if failed is not None:
        return failed
    providers = list(ort.get_available_providers())
    details.update(version=ort.__version__, providers=providers)
    summary = f"onnxruntime {ort.__version__}, providers: {', '.join(providers)}"
    if facts.accelerator == "cuda" and "CUDAExecutionProvider" not in providers:
        fix = f"pip uninstall -y {' '.join(flavours)} && pip install onnxruntime-gpu"
        return Check(
            "onnxruntime", "warning", summary + " (no CUDA provider on a GPU machine)", fix, details
        )
    return Check("onnxruntime", "ok", summary, details=details)


@check("onnxruntime_genai")
def genai_check(facts: Facts) -> Check:
    flavours = _flavours(GENAI_FLAVOURS)
    og, failed, details = _runtime_check("onnxruntime_genai", flavours, "onnxruntime_genai")
    if failed is not None:
        return failed
    devices = ["cpu"]
    devices += ["cuda"] if og.is_cuda_available() else []
    devices += ["dml"] if og.is_dml_available() else []
    details.update(version=og.__version__, devices=devices)
    summary = f"onnxruntime-genai {og.__version__}, devices: {', '.join(devices)}"
    if facts.accelerator == "cuda" and "cuda" not in devices:
        fix = f"pip uninstall -y {' '.join(flavours)} && pip install onnxruntime-genai-cuda"
        return Check(
            "onnxruntime_genai",
            "warning",
            summary + " (CPU package on a GPU machine)",
            fix,
            details,
        )
    return Check("onnxruntime_genai", "ok", summary, details=details)


def extra_requirements() -> dict[str, list[Any]]:
    """Each extra of the installed slmforge and the requirements it brings (nested extras
    such as `slmforge[train]` inside `onnx` expanded)."""
    from packaging.requirements import Requirement

    dist = metadata.distribution("slmforge")
    extras = dist.metadata.get_all("Provides-Extra") or []
    direct: dict[str, list[Any]] = {extra: [] for extra in extras}
    for text in dist.requires or []:
        requirement = Requirement(text)
        for extra in extras:
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
                direct[extra].append(requirement)

    def expand(extra: str, seen: frozenset[str]) -> list[Any]:
        result = []
        for requirement in direct.get(extra, []):
            if requirement.name == "slmforge":
                for nested in sorted(requirement.extras - seen):
                    result += expand(nested, seen | {nested})
            else:
                result.append(requirement)
        return result

    return {extra: expand(extra, frozenset({extra})) for extra in extras}


def _extra_check(extra: str, requirements: list[Any]) -> Check:
    installed = {r.name: dist_version(r.name) for r in requirements}
    missing = [r.name for r in requirements if installed[r.name] is None]
    mismatched = [
        f"{r.name} {installed[r.name]} (needs {r.specifier})"
        for r in requirements
        if installed[r.name] is not None
        and not r.specifier.contains(installed[r.name], prereleases=True)
    ]
    purpose = EXTRA_PURPOSES.get(extra, "optional features")
    details = {
        "installed": not missing and not mismatched,
        "packages": installed,
        "missing": missing,
    }
    details.update(mismatched=mismatched, command=install_command(extra))
    if missing:
        summary = f"slmforge[{extra}] missing: {', '.join(missing)}; needed for {purpose}"
        return Check(f"extra.{extra}", "warning", summary, details["command"], details)
    if mismatched:
        summary = f"slmforge[{extra}] has other versions: {', '.join(mismatched)}"
        return Check(f"extra.{extra}", "warning", summary, details["command"], details)
    return Check(f"extra.{extra}", "ok", f"slmforge[{extra}] installed: {purpose}", details=details)


@check("extras")
def extras_check(facts: Facts) -> list[Check]:
    try:
        requirements = extra_requirements()
    except metadata.PackageNotFoundError:
        return [
            Check(
                "extras",
                "warning",
                "slmforge is not installed as a package, so its extras cannot be checked",
                "pip install -e . in the source checkout",
            )
        ]
    return [
        _extra_check(extra, reqs)
        for extra, reqs in requirements.items()
        if extra not in _NOT_STAGES
    ]


@check("profiles")
def profiles_check(facts: Facts) -> Check:
    from slmforge.errors import SlmforgeError
    from slmforge.profiles import describe_key, key_available, load_profiles, profiles_path

    try:
        profiles = load_profiles()
    except SlmforgeError as err:
        fix = f"correct {profiles_path()} or remove it and add the profiles again"
        return Check("profiles", "error", str(err), fix, {"path": str(profiles_path())})
    keys = {name: key_available(name, p) for name, p in profiles.items()}
    details = {"path": str(profiles_path()), "profiles": sorted(profiles)}
    if not profiles:
        summary = "no cloud profiles (slmforge profile add NAME --kind ... to add one)"
        return Check("profiles", "ok", summary, details=details)
    missing = [
        f"{name}: {describe_key(name, profiles[name])}" for name, ok in keys.items() if ok is False
    ]
    summary = f"{len(profiles)} cloud profiles: {', '.join(profiles)}"
    if missing:
        fix = "set the variables or re-add the profiles (slmforge profile add NAME ... --force)"
        return Check(
            "profiles", "warning", f"{summary}; keys missing for {'; '.join(missing)}", fix, details
        )
    return Check("profiles", "ok", summary, details=details)
