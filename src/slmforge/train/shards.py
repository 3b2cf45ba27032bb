"""Read and write safetensors files one tensor at a time, so memory holds one tensor, not a shard.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header size, a JSON
header {name: {dtype, shape, data_offsets}, "__metadata__": {...}} padded with spaces to a
multiple of 8, then the tensors' bytes back to back. `safetensors.safe_open` memory-maps the
file, and every page it touches counts in the process's resident memory until the file is
closed, so a streaming pass over a shard would still peak at the shard's size; plain reads do not.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _TORCH.items()}
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=_TORCH[self.dtype]).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES[dtype]


class ShardReader:
    """The tensors of one safetensors file, each read from disk when asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        self.data_start = 8 + size
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict[str, Any]] = header

    def infos(self) -> list[TensorInfo]:
        return [
            TensorInfo(name, entry["dtype"], tuple(entry["shape"]))
            for name, entry in self.entries.items()
        ]

    def read(self, handle: BinaryIO, name: str) -> torch.Tensor:
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype, shape = _TORCH[entry["dtype"]], entry["shape"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(end - begin)
        handle.seek(self.data_start + begin)
        handle.readinto(buffer)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def write_shard(
    path: Path,
    infos: Iterable[TensorInfo],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file whose tensors (`infos`, in order) come from `produce(name)` one
    at a time; returns the bytes of tensor data written."""
    infos = list(infos)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for info in infos:
        header[info.name] = {
            "dtype": info.dtype,
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for info in infos:
            tensor = produce(info.name).contiguous()
            if dtype_name(tensor.dtype) != info.dtype or tuple(tensor.shape) != info.shape:
                raise ValueError(f"{info.name}: produced {tensor.dtype} {tuple(tensor.shape)}")
            if tensor.numel():
                handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return offset


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: those its index names, or every one."""
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    return sorted(folder.glob("*.safetensors"))


def write_index(folder: Path, shards: dict[str, list[str]], total_size: int) -> None:
    """`model.safetensors.index.json` for a sharded model (tensor name -> file)."""
    weight_map = {name: file for file, names in shards.items() for name in names}
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
