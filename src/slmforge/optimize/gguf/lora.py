"""PEFT LoRA adapters as llama.cpp LoRA adapter files (or merged into the base weights).

llama.cpp's adapter GGUF (as its convert_lora_to_gguf.py writes it): `general.type = adapter`,
`adapter.type = lora`, one `adapter.lora.alpha`, and per adapted weight two tensors named after
the base tensor: `<name>.lora_a` (PEFT's A, [rank, in]) and `<name>.lora_b` (B, [out, rank]).
llama.cpp adds `alpha / rank * B @ (A @ x)`, rank read from each A. Where PEFT scales a module
differently (rsLoRA's alpha/sqrt(r), `alpha_pattern`), the difference is folded into B so the
single alpha still gives PEFT's result. B's rows carry the base weight's row order, so for
Llama and Mistral the q/k RoPE permutation applies to B (never to A, whose rows are ranks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.artifacts import folder_digest, read_manifest
from slmforge.errors import InputError
from slmforge.optimize.gguf.families import family_of, gguf_name, permute_rows, rope_heads
from slmforge.optimize.gguf.writer import PlannedTensor, source_tensors, write_file

_PREFIX = "base_model.model."


@dataclass
class Adapter:
    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    # Hugging Face weight name -> (A [r, in], B [out, r] scaled so alpha/r is PEFT's scale)
    pairs: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)

    def delta(self, hf_name: str) -> Any:
        """The merged change of one base weight (alpha/r * B @ A), or None."""
        if hf_name not in self.pairs:
            return None
        a, b = self.pairs[hf_name]
        return (self.alpha / a.shape[0]) * (b @ a)


def _config(name: str, path: Path) -> dict[str, Any]:
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise InputError(f"adapter {name}: {path} is not a PEFT adapter (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise InputError(f"adapter {name}: only LoRA adapters convert to GGUF (not DoRA or others)")
    if config.get("modules_to_save") or config.get("trainable_token_indices"):
        raise InputError(
            f"adapter {name}: it trains whole modules or embedding rows beside LoRA "
            "(modules_to_save); llama.cpp adapters hold LoRA pairs only: merge it instead"
        )
    if not (path / "adapter_model.safetensors").is_file():
        raise InputError(f"adapter {name}: {path} has no adapter_model.safetensors")
    return config


def _peft_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scale of one module: its alpha over its rank (or sqrt(rank) with rsLoRA)."""
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_adapter(name: str, path: Path) -> Adapter:
    """Read a PEFT LoRA adapter (small: ranks x widths) with B rescaled for one alpha."""
    from safetensors.torch import load_file

    config = _config(name, path)
    alpha = float(config["lora_alpha"])
    raw = {
        key.removeprefix(_PREFIX): value.float().numpy()
        for key, value in load_file(str(path / "adapter_model.safetensors")).items()
    }
    pairs = {}
    for key, a in raw.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise InputError(f"adapter {name}: {key} is not a LoRA A/B tensor")
            continue
        module = key.split(".lora_A.")[0]
        b = raw.get(f"{module}.lora_B.weight")
        if b is None or a.ndim != 2 or b.shape[1] != a.shape[0]:
            raise InputError(f"adapter {name}: {module} has no matching lora_B")
        rank = a.shape[0]
        b = b * (_peft_scale(config, module, rank) / (alpha / rank))
        pairs[f"{module}.weight"] = (a, b)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return Adapter(name, path, int(config["r"]), alpha, tuple(sorted(targets)), pairs)


def check_adapter(adapter: Adapter, model: Path, config: dict[str, Any]) -> None:
    """Refuse an adapter trained on another base: by the recorded base's hash when there is
    one, and always by shape (every A must read the base weight's input width, every B
    write its output height)."""
    _check_recorded_base(adapter, model)
    family = family_of(config)
    shapes = {name: shape for _, name, shape in source_tensors(model)}
    tied = bool(config.get("tie_word_embeddings"))
    for hf_name, (a, b) in adapter.pairs.items():
        base = shapes.get(hf_name)
        if base is None or base != (b.shape[0], a.shape[1]):
            raise InputError(
                f"adapter {adapter.name} was trained on a different base: {hf_name} is "
                f"{base or 'missing'} in {model}, the adapter needs {(b.shape[0], a.shape[1])}"
            )
        if gguf_name(family, hf_name) is None or (tied and hf_name == "lm_head.weight"):
            raise InputError(
                f"adapter {adapter.name}: it adapts {hf_name}, which a llama.cpp {family.arch} "
                "adapter cannot hold; merge it with --merge-adapter"
            )


def _check_recorded_base(adapter: Adapter, model: Path) -> None:
    manifest = read_manifest(adapter.path)
    base = manifest.source.get("base_model") if manifest else None
    digest = folder_digest(model)
    if base is not None and base.sha256 and base.sha256 != digest:
        raise InputError(
            f"adapter {adapter.name} was trained on a different base ({base.path}, sha256 "
            f"{base.sha256[:12]}) than {model} (sha256 {digest[:12]})"
        )
    if base is None:
        config = json.loads((adapter.path / "adapter_config.json").read_text(encoding="utf-8"))
        recorded = Path(config.get("base_model_name_or_path") or "")
        here = str(recorded) not in ("", ".") and recorded.is_dir()
        if here and folder_digest(recorded) != digest:
            raise InputError(f"adapter {adapter.name} was trained on a different base ({recorded})")


def adapter_tensors(adapter: Adapter, config: dict[str, Any]) -> list[PlannedTensor]:
    """The `.lora_a` / `.lora_b` tensors of llama.cpp's adapter file, f32, B permuted like
    its base weight."""
    import gguf

    family = family_of(config)
    f32 = gguf.GGMLQuantizationType.F32
    planned = []
    for hf_name, (a, b) in sorted(adapter.pairs.items()):
        name = gguf_name(family, hf_name)
        assert name is not None  # check_adapter ran
        heads = rope_heads(family, name, config)
        b_rows = permute_rows(b, heads) if heads else b
        planned.append(PlannedTensor(f"{name}.lora_a", a.shape, f32, lambda a=a: a))
        planned.append(PlannedTensor(f"{name}.lora_b", b_rows.shape, f32, lambda b=b_rows: b))
    return planned


def write_adapter(adapter: Adapter, config: dict[str, Any], out: Path) -> None:
    import gguf

    family = family_of(config)

    def metadata(writer: Any) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(adapter.name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)

    write_file(out, family.arch, metadata, adapter_tensors(adapter, config))
