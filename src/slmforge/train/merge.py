"""Merge a LoRA/DoRA adapter into its base model and write a normal model folder.

The merge streams over the base's safetensors shards one tensor at a time: a tensor the adapter
adapts gets its delta added as PEFT's `merge_and_unload` computes it (LoRA: W + s * B @ A, with
s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA; DoRA: the row norms of W + delta
rescaled to the magnitude vector), every other tensor is copied as stored, and the output keeps
the base's shard layout and index. Memory stays near one tensor whatever the model's size.
Adapters the streaming pass does not understand (other PEFT types and LoRA variants, an adapted
LM head whose weights are tied to the embeddings, tensor names the checkpoint lacks, pickle
checkpoints) are merged the way they always were, in memory with PEFT, and the reason is said.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import artifact, source_of
from slmforge.errors import InputError, ModelError
from slmforge.models.load import adapter_base

_PREFIX = "base_model.model."
# adapter_config.json options that leave the merge arithmetic alone (initialisation, training,
# bookkeeping); any other option with a value sends the adapter to PEFT's own merge.
_MERGE_NEUTRAL = {
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "corda_config",
    "ensure_weight_tying", "eva_config", "exclude_modules", "fan_in_fan_out", "inference_mode",
    "init_lora_weights", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
    "lora_bias", "lora_dropout", "lora_ga_config", "megatron_config", "megatron_core",
    "modules_to_save", "peft_type", "peft_version", "qalora_group_size", "r", "rank_pattern",
    "revision", "target_modules", "task_type", "use_dora", "use_rslora",
}  # fmt: skip


# -- what the adapter changes --------------------------------------------------------------------
@dataclass
class ModuleDelta:
    """The adapter tensors of one adapted module (`name` as in the base model)."""

    name: str
    tensors: dict[str, Any] = field(default_factory=dict)  # lora_A, lora_B, magnitude, ...
    scaling: float = 1.0

    def apply(self, weight: Any, fan_in_fan_out: bool) -> Any:
        """The merged weight (fp32), the way PEFT's merge computes it."""
        import torch

        w = weight.float()
        if "lora_embedding_A" in self.tensors:
            b, a = self.tensors["lora_embedding_B"], self.tensors["lora_embedding_A"]
            return w + (b.float() @ a.float()).T * self.scaling
        delta = (self.tensors["lora_B"].float() @ self.tensors["lora_A"].float()) * self.scaling
        if fan_in_fan_out:
            delta = delta.T
        merged = w + delta
        if "magnitude" in self.tensors:  # DoRA: rescale each output row to its magnitude
            norm = torch.linalg.norm(merged, dim=1)
            merged = (self.tensors["magnitude"].float() / norm).view(-1, 1) * merged
        return merged


@dataclass
class AdapterPlan:
    deltas: dict[str, ModuleDelta]  # base tensor name (`<module>.weight`) -> delta
    biases: dict[str, tuple[Any, float]]  # base bias name -> (lora_B bias, scaling)
    replaced: dict[str, Any]  # base tensor name -> tensor saved whole in the adapter
    fan_in_fan_out: bool


class NotStreamable(Exception):
    """Why the streaming merge cannot take this adapter (PEFT's merge does it instead)."""


_SUFFIXES = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".lora_B.bias": "lora_B_bias",
    ".lora_magnitude_vector": "magnitude",
    ".lora_embedding_A": "lora_embedding_A",
    ".lora_embedding_B": "lora_embedding_B",
}


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches a module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter: Path) -> AdapterPlan:
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise NotStreamable(f"a {config.get('peft_type')} adapter")
    odd = sorted(k for k, v in config.items() if v and k not in _MERGE_NEUTRAL)
    if odd:
        raise NotStreamable(f"adapter option {', '.join(odd)}")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise NotStreamable("no adapter_model.safetensors")
    modules: dict[str, ModuleDelta] = {}
    replaced: dict[str, Any] = {}
    for key, tensor in load_file(weights).items():
        name = key.removeprefix(_PREFIX)
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is None:  # modules_to_save or saved embeddings: the whole tensor
            replaced[name.replace(".base_layer.", ".")] = tensor
            continue
        module = name.removesuffix(suffix)
        modules.setdefault(module, ModuleDelta(module)).tensors[_SUFFIXES[suffix]] = tensor
    deltas, biases = {}, {}
    for module, delta in modules.items():
        a = delta.tensors.get("lora_A", delta.tensors.get("lora_embedding_A"))
        if a is None or ("lora_B" not in delta.tensors and "lora_embedding_B" not in delta.tensors):
            raise NotStreamable(f"{module} has an incomplete LoRA pair")
        if "magnitude" in delta.tensors and (
            "lora_A" not in delta.tensors or config.get("fan_in_fan_out")
        ):
            raise NotStreamable(f"DoRA on {module}, which is not a plain linear layer")
        rank = a.shape[0]
        alpha = _pattern_value(
            config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)
        )
        delta.scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        deltas[f"{module}.weight"] = delta
        if "lora_B_bias" in delta.tensors:
            biases[f"{module}.bias"] = (delta.tensors["lora_B_bias"], delta.scaling)
    return AdapterPlan(deltas, biases, replaced, bool(config.get("fan_in_fan_out")))


# -- the streaming merge -------------------------------------------------------------------------
def base_folder(base: str) -> Path:
    """The local folder of a base model: the folder itself, or a hub id's downloaded files."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelError(f"{base}: no such model folder (and not a hub id like 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.py"]))
    except Exception as exc:  # the hub client raises many kinds; each means "not available"
        raise ModelError(f"cannot fetch the base model {base}: {exc}") from None


def _check_shapes(plan: AdapterPlan, infos: dict[str, Any], tied: bool) -> None:
    wanted = set(plan.deltas) | set(plan.biases) | set(plan.replaced)
    missing = sorted(wanted - set(infos))
    if "lm_head.weight" in missing and tied:
        raise NotStreamable("the adapter changes lm_head, whose weights are tied to the embeddings")
    if missing:
        raise NotStreamable(f"the base checkpoint has no tensor {missing[0]}")
    for name, delta in plan.deltas.items():
        t = delta.tensors
        if "lora_A" in t:
            shape = (t["lora_B"].shape[0], t["lora_A"].shape[1])
            shape = shape[::-1] if plan.fan_in_fan_out else shape
        else:
            shape = (t["lora_embedding_A"].shape[1], t["lora_embedding_B"].shape[0])
        if tuple(infos[name].shape) != shape:
            raise InputError(
                f"the adapter does not fit this base model: {name} is {list(infos[name].shape)} "
                f"in the base but {list(shape)} in the adapter; pass the base it was trained on"
            )
    for name, tensor in plan.replaced.items():
        if tuple(infos[name].shape) != tuple(tensor.shape):
            raise NotStreamable(f"the adapter saves {name} with another shape (resized vocabulary)")


def _merged(tensor: Any, name: str, plan: AdapterPlan, target: Any) -> Any:
    """One output tensor: merged, replaced or copied, in the stored dtype or `target`."""
    stored = tensor.dtype
    tensor = plan.replaced.get(name, tensor)
    if name in plan.deltas:
        tensor = plan.deltas[name].apply(tensor, plan.fan_in_fan_out)
    elif name in plan.biases:
        bias, scaling = plan.biases[name]
        tensor = tensor.float() + bias.float() * scaling
    dtype = target if target is not None and stored.is_floating_point else stored
    return tensor.to(dtype)


def stream_merge(folder: Path, plan: AdapterPlan, out: Path, dtype: str) -> None:
    """Write the merged weights of the base in `folder` to `out`, shard by shard."""
    import torch

    from slmforge.train.shards import (
        INDEX,
        ShardReader,
        TensorInfo,
        dtype_name,
        weight_files,
        write_index,
        write_shard,
    )

    files = weight_files(folder)
    if not files:
        raise NotStreamable("the base has no safetensors weights")
    readers = [ShardReader(path) for path in files]
    infos = {info.name: info for reader in readers for info in reader.infos()}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    _check_shapes(plan, infos, bool(config.get("tie_word_embeddings")))
    target = getattr(torch, dtype) if dtype != "auto" else None
    shards, total = {}, 0
    for reader in readers:
        wanted = [
            TensorInfo(i.name, dtype_name(target), i.shape)
            if target is not None and i.dtype in ("F32", "BF16", "F16", "F64")
            else i
            for i in reader.infos()
        ]
        with open(reader.path, "rb") as handle:
            total += write_shard(
                out / reader.path.name,
                wanted,
                lambda name, handle=handle, reader=reader: _merged(
                    reader.read(handle, name), name, plan, target
                ),
                reader.metadata or {"format": "pt"},
            )
        shards[reader.path.name] = [i.name for i in wanted]
    if len(files) > 1 or (folder / INDEX).is_file():
        write_index(out, shards, total)
    _copy_configs(folder, out, config, dtype)


def _copy_configs(folder: Path, out: Path, config: dict[str, Any], dtype: str) -> None:
    """config.json (with the new dtype), generation config and any custom model code."""
    if dtype != "auto":
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for path in [folder / "generation_config.json", *folder.glob("*.py")]:
        if path.is_file():
            shutil.copy(path, out / path.name)


def merge_in_memory(
    adapter: Path, base: str, out: Path, dtype: str, allow_pickle: bool, trust_remote_code: bool
) -> None:
    """PEFT's own merge on the whole model in memory, for adapters streaming does not take."""
    import torch
    from peft import PeftModel

    from slmforge.models.load import load_causal_lm

    model = load_causal_lm(
        base, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)


def _write_merged(
    adapter: Path, base: str, out: Path, dtype: str, allow_pickle: bool, trust_remote_code: bool
) -> None:
    try:
        stream_merge(base_folder(base), read_adapter(adapter), out, dtype)
    except NotStreamable as why:
        progress.warn(f"merge: {why}; merging in memory with PEFT instead (holds the whole model)")
        for path in out.iterdir():
            path.unlink()
        merge_in_memory(adapter, base, out, dtype, allow_pickle, trust_remote_code)


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    base: str | None = None,
    dtype: str = "auto",
    force: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import DTYPES, load_tokenizer

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    base = base or adapter_base(adapter)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(str(tokenizer_source), trust_remote_code=trust_remote_code)
    with artifact(out, "model", force=force) as art:
        _write_merged(adapter, base, art.path, dtype, allow_pickle, trust_remote_code)
        tokenizer.save_pretrained(art.path)
        art.manifest.source = {
            "base_model": source_of(base, "model"),
            "adapter": source_of(adapter, "adapter"),
        }
        art.manifest.config = {"dtype": dtype}
        art.manifest.chat_template = getattr(tokenizer, "chat_template", None)
        art.manifest.stop = stop_strings(tokenizer)
        art.manifest.details = {"merged_from": "adapter"}
    progress.info(f"merged {adapter} into {base}: {out}")
    return Path(out)
