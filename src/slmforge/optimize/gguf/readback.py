"""Read a written GGUF back as Hugging Face weights: the other half of the round trip.

Verification must judge what llama.cpp will load, so it reads the file itself with the `gguf`
package's reader, dequantizes each tensor with its reference dequantizer, and undoes what the
writer did (llama.cpp names, the q/k RoPE permutation), giving tensors that drop into the
Hugging Face model of the same config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.errors import RunError
from slmforge.optimize.gguf.families import Family, gguf_name, rope_heads, unpermute_rows


class GgufTensors:
    """The tensors of one GGUF file by llama.cpp name, dequantized on demand to float32."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        self.reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str) -> Any:
        found = self.reader.fields.get(key)
        return None if found is None else found.contents()

    def types(self) -> dict[str, str]:
        return {name: t.tensor_type.name for name, t in self.tensors.items()}

    def get(self, name: str) -> Any:
        import gguf
        import numpy as np

        if name not in self.tensors:
            raise RunError(f"{self.path.name}: no tensor {name}")
        tensor = self.tensors[name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        return np.array(values, dtype=np.float32)  # a copy: f32 data is a read-only memmap


def hf_weight(tensors: GgufTensors, family: Family, config: dict[str, Any], hf_name: str) -> Any:
    """The Hugging Face tensor `hf_name` as the GGUF file holds it."""
    name = gguf_name(family, hf_name)
    if name is None:
        raise RunError(f"{tensors.path.name}: no GGUF counterpart for {hf_name}")
    if name == "output.weight" and name not in tensors.tensors:
        name = "token_embd.weight"  # tied: llama.cpp reads the embedding as the head
    values = tensors.get(name)
    heads = rope_heads(family, name, config)
    return unpermute_rows(values, heads) if heads else values


def adapter_deltas(
    path: Path, family: Family, config: dict[str, Any], hf_names: list[str]
) -> dict[str, Any]:
    """What a llama.cpp LoRA file adds to each Hugging Face weight: alpha/r * B @ A, with B's
    rows put back in Hugging Face order."""
    tensors = GgufTensors(path)
    if tensors.field("general.type") != "adapter" or tensors.field("adapter.type") != "lora":
        raise RunError(f"{path.name}: not a llama.cpp LoRA adapter file")
    alpha = float(tensors.field("adapter.lora.alpha"))
    deltas = {}
    for hf_name in hf_names:
        name = gguf_name(family, hf_name)
        if name is None or f"{name}.lora_a" not in tensors.tensors:
            continue
        a, b = tensors.get(f"{name}.lora_a"), tensors.get(f"{name}.lora_b")
        heads = rope_heads(family, name, config)
        b = unpermute_rows(b, heads) if heads else b
        deltas[hf_name] = (alpha / a.shape[0]) * (b @ a)
    expected = sum(1 for key in tensors.tensors if key.endswith(".lora_a"))
    if len(deltas) != expected:
        raise RunError(f"{path.name}: {expected - len(deltas)} LoRA pairs match no model weight")
    return deltas


def load_into(model: Any, tensors: GgufTensors, family: Family, config: dict[str, Any]) -> None:
    """Overwrite every parameter of the Hugging Face `model` with the GGUF file's values."""
    import torch

    with torch.no_grad():
        for hf_name, param in model.named_parameters():
            values = hf_weight(tensors, family, config, hf_name)
            if tuple(values.shape) != tuple(param.shape):
                raise RunError(f"{hf_name}: GGUF shape {values.shape}, model {tuple(param.shape)}")
            param.copy_(torch.from_numpy(values))
