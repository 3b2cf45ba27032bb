"""Facts about this machine, each gathered once and only when a check asks for it.

Gathering is lazy because some facts are slow (importing torch takes seconds). Tests replace
any fact by passing it to the constructor: `Facts(accelerator="cuda", torch=None)`.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_NVIDIA_PROC = Path("/proc/driver/nvidia/version")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "asimd", "sve", "i8mm")


@dataclass(frozen=True)
class Gpu:
    name: str
    backend: str  # "cuda" | "rocm" | "mps"
    memory_total: int | None = None
    memory_free: int | None = None


@dataclass(frozen=True)
class Nvml:
    """What the NVIDIA driver reports through NVML (nvidia-ml-py)."""

    driver: str
    cuda: str  # the newest CUDA version the driver supports, e.g. "12.4"
    gpus: list[Gpu]


@dataclass(frozen=True)
class TorchInfo:
    version: str
    cuda: str | None  # torch.version.cuda: the CUDA the build targets, None for CPU/ROCm
    hip: str | None  # torch.version.hip: set for ROCm builds
    cuda_available: bool
    mps_available: bool
    devices: list[Gpu]


@dataclass(frozen=True)
class Memory:
    total: int | None
    available: int | None
    limit: int | None  # a cgroup (container) limit below the machine's memory, if any


@dataclass(frozen=True)
class Cpu:
    model: str
    logical: int
    physical: int | None
    usable: int  # after CPU affinity and a container's CPU quota
    flags: list[str]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def dist_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml() -> Nvml | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver (or no GPU): NVML cannot load
    try:
        version = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = _decode(pynvml.nvmlDeviceGetName(handle))
            gpus.append(Gpu(name, "cuda", int(memory.total), int(memory.free)))
        driver = _decode(pynvml.nvmlSystemGetDriverVersion())
        return Nvml(driver, f"{version // 1000}.{version % 1000 // 10}", gpus)
    finally:
        pynvml.nvmlShutdown()


def _torch() -> TorchInfo | None:
    try:
        import torch
    except ImportError:
        return None
    devices = []
    cuda_available = torch.cuda.is_available()
    backend = "rocm" if torch.version.hip else "cuda"
    for index in range(torch.cuda.device_count() if cuda_available else 0):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(Gpu(torch.cuda.get_device_name(index), backend, int(total), int(free)))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return TorchInfo(
        version=torch.__version__,
        cuda=torch.version.cuda,
        hip=torch.version.hip,
        cuda_available=cuda_available,
        mps_available=mps,
        devices=devices,
    )


def _meminfo() -> dict[str, int]:
    values = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        key, _, rest = line.partition(":")
        number = rest.split()
        if number and number[0].isdigit():
            values[key] = int(number[0]) * 1024
    return values


def _cgroup_limit() -> tuple[int | None, int | None]:
    """(limit, usage) of this process's memory cgroup, when it has a limit."""
    limit_text = _read(_CGROUP_V2 / "memory.max") or _read(_CGROUP_V1_MEMORY)
    if not limit_text or not limit_text.strip().isdigit():
        return None, None
    usage_text = _read(_CGROUP_V2 / "memory.current") or "0"
    usage = int(usage_text.strip()) if usage_text.strip().isdigit() else 0
    return int(limit_text.strip()), usage


def _memory() -> Memory:
    info = _meminfo()
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None:
        try:
            import psutil

            virtual = psutil.virtual_memory()
            total, available = int(virtual.total), int(virtual.available)
        except ImportError:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit, usage = _cgroup_limit()
    if limit is None or total is None or limit >= total:
        return Memory(total, available, None)
    in_container = max(limit - (usage or 0), 0)
    return Memory(limit, min(available, in_container) if available else in_container, limit)


def _cpu_model(cpuinfo: str) -> str:
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    if platform.system() == "Darwin":
        result = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_quota() -> int | None:
    text = _read(_CGROUP_V2 / "cpu.max")
    if not text or text.split()[0] == "max":
        return None
    quota, period = (int(x) for x in text.split()[:2])
    return max(1, quota // period)


def _physical_cores(cpuinfo: str) -> int | None:
    cores = set()
    for block in cpuinfo.split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or None


def _cpu() -> Cpu:
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    usable = min(usable, _cpu_quota() or usable)
    flag_line = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    present = set(flag_line.group(1).split()) if flag_line else set()
    return Cpu(
        model=_cpu_model(cpuinfo),
        logical=logical,
        physical=_physical_cores(cpuinfo),
        usable=usable,
        flags=[flag for flag in _CPU_FLAGS if flag in present],
    )


class Facts:
    """Lazily gathered machine facts; keyword arguments replace any of them (for tests)."""

    def __init__(self, **known: Any) -> None:
        unknown = set(known) - {n for n in dir(type(self)) if not n.startswith("_")}
        if unknown:
            raise TypeError(f"unknown facts: {', '.join(sorted(unknown))}")
        self.__dict__.update(known)  # cached_property reads the instance dict first

    @cached_property
    def cpu(self) -> Cpu:
        return _cpu()

    @cached_property
    def memory(self) -> Memory:
        return _memory()

    @cached_property
    def nvml(self) -> Nvml | None:
        return _nvml()

    @cached_property
    def torch(self) -> TorchInfo | None:
        return _torch()

    @cached_property
    def nvidia_driver(self) -> bool:
        """Signs of an NVIDIA driver, whether or not anything can use it."""
        return _NVIDIA_PROC.exists() or shutil.which("nvidia-smi") is not None

    @cached_property
    def gpus(self) -> list[Gpu]:
        if self.nvml is not None and self.nvml.gpus:
            return self.nvml.gpus
        if self.torch is not None and self.torch.devices:
            return self.torch.devices
        if self.torch is not None and self.torch.mps_available:
            return [Gpu("Apple GPU", "mps", self.memory.total, self.memory.available)]
        return []

    @cached_property
    def accelerator(self) -> str:
        """The best device this machine has: "cuda", "rocm", "mps" or "cpu"."""
        return self.gpus[0].backend if self.gpus else "cpu"

    @cached_property
    def os_name(self) -> str:
        release = _read(Path("/etc/os-release")) or ""
        match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', release, re.MULTILINE)
        return match.group(1) if match else f"{platform.system()} {platform.release()}"
