"""Checks of the machine: Python, OS, CPU, memory, GPUs, disk, model cache, chromium."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from slmforge.doctor.facts import Facts
from slmforge.doctor.report import Check, check
from slmforge.home import slmforge_home

GIB = 1024**3
_LOW_MEMORY = 8 * GIB
_DISK_WARNING = 20 * GIB
_DISK_ERROR = 2 * GIB
_CACHE_WALK_LIMIT = 200_000  # files; a larger cache is reported as "at least"


def gib(num_bytes: int | None) -> str:
    return "?" if num_bytes is None else f"{num_bytes / GIB:.1f} GiB"


@check("python")
def python_check(facts: Facts) -> Check:
    version = platform.python_version()
    details = {
        "version": version,
        "executable": sys.executable,
        "venv": sys.prefix != sys.base_prefix,
    }
    where = "virtual environment" if details["venv"] else "system Python"
    return Check("python", "ok", f"Python {version} ({where} {sys.prefix})", details=details)


@check("os")
def os_check(facts: Facts) -> Check:
    details = {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "name": facts.os_name,
    }
    return Check("os", "ok", f"{facts.os_name} ({platform.machine()})", details=details)


@check("cpu")
def cpu_check(facts: Facts) -> Check:
    cpu = facts.cpu
    cores = f"{cpu.physical} cores, " if cpu.physical else ""
    flags = f", {' '.join(cpu.flags)}" if cpu.flags else ""
    summary = f"{cpu.model}: {cores}{cpu.logical} threads, {cpu.usable} usable{flags}"
    details = {
        "model": cpu.model,
        "physical_cores": cpu.physical,
        "logical_cores": cpu.logical,
        "usable_cores": cpu.usable,
        "flags": cpu.flags,
    }
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and "avx2" not in cpu.flags:
        fix = "expect slow CPU inference; use a machine with AVX2 or a GPU for int4 models"
        return Check("cpu", "warning", summary + " (no AVX2)", fix, details)
    return Check("cpu", "ok", summary, details=details)


@check("memory")
def memory_check(facts: Facts) -> Check:
    memory = facts.memory
    details = {
        "total_bytes": memory.total,
        "available_bytes": memory.available,
        "container_limit_bytes": memory.limit,
    }
    limit = " (container limit)" if memory.limit else ""
    summary = f"{gib(memory.total)} memory{limit}, {gib(memory.available)} available"
    if memory.total is not None and memory.total < _LOW_MEMORY:
        fix = "models above ~1B parameters will not fine-tune here; use a smaller model or a GPU"
        return Check("memory", "warning", summary, fix, details)
    return Check("memory", "ok", summary, details=details)


def _gpu_details(facts: Facts) -> dict[str, object]:
    nvml = facts.nvml
    return {
        "accelerator": facts.accelerator,
        "devices": [
            {
                "name": g.name,
                "backend": g.backend,
                "memory_total_bytes": g.memory_total,
                "memory_free_bytes": g.memory_free,
            }
            for g in facts.gpus
        ],
        "nvidia_driver": nvml.driver if nvml else None,
        "driver_cuda": nvml.cuda if nvml else None,
    }


@check("gpu")
def gpu_check(facts: Facts) -> Check:
    details = _gpu_details(facts)
    if not facts.gpus:
        if facts.nvidia_driver:
            return Check(
                "gpu",
                "warning",
                "an NVIDIA driver is installed but no GPU is usable (neither NVML nor torch "
                "sees one)",
                "run nvidia-smi; then pip install nvidia-ml-py and a CUDA build of torch",
                details,
            )
        return Check(
            "gpu",
            "ok",
            "no GPU: CPU only (LoRA on small models and int4 ONNX inference run on CPU; "
            "QLoRA and fp16/bf16 training need a CUDA GPU)",
            details=details,
        )
    first = facts.gpus[0]
    memory = f"{gib(first.memory_total)}, {gib(first.memory_free)} free"
    count = f"{len(facts.gpus)} x " if len(facts.gpus) > 1 else ""
    driver = f", driver {facts.nvml.driver} (CUDA {facts.nvml.cuda})" if facts.nvml else ""
    summary = f"{first.backend.upper()}: {count}{first.name} ({memory}){driver}"
    return Check("gpu", "ok", summary, details=details)


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (disk_usage needs an existing path)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def hub_cache() -> Path:
    """Where Hugging Face models are cached (HF_HUB_CACHE, HF_HOME/hub or ~/.cache)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        pass
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    home = Path(os.environ.get("HF_HOME", cache / "huggingface")).expanduser()
    return home / "hub"


@check("disk")
def disk_check(facts: Facts) -> Check:
    places = {
        "working directory": Path.cwd(),
        "model cache": hub_cache(),
        "slmforge home": slmforge_home(),
    }
    seen: dict[int, tuple[str, Path, int]] = {}
    for label, path in places.items():
        existing = _existing(path)
        device = existing.stat().st_dev
        if device not in seen:
            seen[device] = (label, existing, shutil.disk_usage(existing).free)
    free = [
        {"where": label, "path": str(path), "free_bytes": n} for label, path, n in seen.values()
    ]
    lowest = min(free, key=lambda entry: entry["free_bytes"])
    summary = ", ".join(f"{gib(e['free_bytes'])} free at {e['path']} ({e['where']})" for e in free)
    details = {"filesystems": free, "min_free_bytes": lowest["free_bytes"]}
    fix = f"free space at {lowest['path']}: a 4B model takes ~8 GiB, its int4 ONNX ~3 GiB more"
    if lowest["free_bytes"] < _DISK_ERROR:
        return Check("disk", "error", summary, fix, details)
    if lowest["free_bytes"] < _DISK_WARNING:
        return Check("disk", "warning", summary, fix, details)
    return Check("disk", "ok", summary, details=details)


def _tree_size(root: Path) -> tuple[int, bool]:
    """Bytes of regular files under `root` (symlinks not followed), and whether that is all."""
    total, seen, stack = 0, 0, [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > _CACHE_WALK_LIMIT:
                return total, False
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total, True


@check("model_cache")
def model_cache_check(facts: Facts) -> Check:
    cache = hub_cache()
    size, complete = _tree_size(cache) if cache.is_dir() else (0, True)
    models = sorted(p.name[len("models--") :].replace("--", "/") for p in cache.glob("models--*"))
    details = {
        "path": str(cache),
        "exists": cache.is_dir(),
        "size_bytes": size,
        "size_complete": complete,
        "models": models,
        "offline": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"),
    }
    at_least = "" if complete else "at least "
    summary = (
        f"model cache {cache}: {len(models)} models, {at_least}{gib(size)} (HF_HUB_CACHE moves it)"
    )
    return Check("model_cache", "ok", summary, details=details)


@check("chromium")
def chromium_check(facts: Facts) -> Check:
    path = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    details = {"path": path}
    if path is None:
        return Check(
            "chromium",
            "warning",
            "chromium not found: browser features (the app's page tests) cannot run",
            "apt-get install -y chromium (Debian/Ubuntu)",
            details,
        )
    return Check("chromium", "ok", f"chromium at {path}", details=details)
