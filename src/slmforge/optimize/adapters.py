"""Runtime-switchable LoRA adapters for an ONNX Runtime GenAI model.

The builder bakes one adapter in (`adapter_path=`): its graph then has LoRA MatMuls whose
weights are initializers `model.layers.0.attn.q_proj.lora_A.MatMul.weight` (PEFT `lora_A.weight`
transposed) and `...lora_B.MatMul.weight` (PEFT `lora_B.weight` transposed, times alpha/r).
`make_switchable` turns each of those into a graph input with a symbolic rank and a rank-1 zero
initializer of the same name as its default, so the model runs as the plain base when no adapter
is active; each adapter's tensors go to `<name>.onnx_adapter` (onnxruntime's AdapterFormat),
which onnxruntime-genai loads with `og.Adapters` and selects per request.

The graph only has LoRA nodes where the build adapter had them, so every adapter of one base
must target the same modules. Fused projections (Phi-3's qkv_proj and gate_up_proj) are split
by the builder into q/k/v and gate/up: lora_A is shared and lora_B is sliced by rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.artifacts import folder_digest, read_manifest
from slmforge.errors import InputError, RunError

_LORA_INIT = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.MatMul\.weight$")
# Graph module -> (fused PEFT module, order of the part inside it).
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_LINEARS = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
RANK_DIM = "lora_rank"
_SELF_CHECK_TOL = 1e-5


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base: str | None


def read_adapter(name: str, path: Path) -> AdapterInfo:
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise InputError(f"adapter {name}: {path} is not a PEFT adapter (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise InputError(f"adapter {name}: only LoRA adapters convert to ONNX (not DoRA or others)")
    if not (path / "adapter_model.safetensors").is_file():
        raise InputError(f"adapter {name}: {path} has no adapter_model.safetensors")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    return AdapterInfo(
        name=name,
        path=path,
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        target_modules=tuple(sorted(targets)),
        base=config.get("base_model_name_or_path"),
    )


def check_adapters(adapters: dict[str, Path], model: Path) -> list[AdapterInfo]:
    """Read every adapter and check it fits `model` and the others, before any work."""
    infos = [read_adapter(name, path) for name, path in adapters.items()]
    digest = folder_digest(model)
    for info in infos:
        _check_base(info, model, digest)
    first = infos[0] if infos else None
    for info in infos[1:]:
        if info.target_modules != first.target_modules:
            raise InputError(
                f"adapters {first.name} and {info.name} target different modules "
                f"({', '.join(first.target_modules)} vs {', '.join(info.target_modules)}); "
                "switchable adapters of one base must share target modules"
            )
    return infos


def _check_base(info: AdapterInfo, model: Path, digest: str) -> None:
    manifest = read_manifest(info.path)
    base = manifest.source.get("base_model") if manifest else None
    if base is not None and base.sha256:
        if base.sha256 != digest:
            raise InputError(
                f"adapter {info.name} was trained on a different base ({base.path}, sha256 "
                f"{base.sha256[:12]}) than {model} (sha256 {digest[:12]})"
            )
        return
    # No slmforge manifest: PEFT's recorded base, when it is a folder here, must be this model.
    recorded = Path(info.base) if info.base else None
    if recorded is not None and recorded.is_dir() and folder_digest(recorded) != digest:
        raise InputError(f"adapter {info.name} was trained on a different base ({info.base})")


def lora_nodes_to_exclude(num_layers: int) -> list[str]:
    """Every LoRA MatMul node name the builder may create, so quantization leaves them float."""
    return [
        f"/model/layers.{layer}/{block}/{linear}/lora_{ab}/MatMul"
        for layer in range(num_layers)
        for block, linears in _LINEARS.items()
        for linear in linears
        for ab in "AB"
    ]


def make_switchable(model_path: Path) -> dict[str, tuple[int, ...]]:
    """Turn the LoRA initializers of `model_path` into inputs with zero defaults, in place.

    Returns the baked-in (build adapter's) tensors' shapes by name, for the self-check.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=True)
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for init in graph.initializer:
        match = _LORA_INIT.match(init.name)
        if not match:
            continue
        if init.data_type != TensorProto.FLOAT:
            raise RunError(f"{init.name} was quantized; LoRA MatMuls must stay float")
        rows, cols = init.dims
        shapes[init.name] = (rows, cols)
        is_a = match["ab"] == "A"
        dims = [rows, RANK_DIM] if is_a else [RANK_DIM, cols]
        graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, dims))
        zero = np.zeros((rows, 1) if is_a else (1, cols), dtype=np.float32)
        init.CopyFrom(numpy_helper.from_array(zero, init.name))
    if not shapes:
        raise RunError(f"{model_path} has no LoRA weights; the adapter was not built in")
    data_name = model_path.name + ".data"
    (model_path.parent / data_name).unlink(missing_ok=True)
    onnx.save_model(
        model, str(model_path), save_as_external_data=True, location=data_name, size_threshold=1024
    )
    return shapes


def baked_tensors(model_path: Path, names: list[str]) -> dict[str, Any]:
    """The values of `names` in a built model (read before `make_switchable` zeroes them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=True)
    wanted = set(names)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in wanted}


def lora_initializer_shapes(model_path: Path) -> dict[str, tuple[int, ...]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {i.name: tuple(i.dims) for i in model.graph.initializer if _LORA_INIT.match(i.name)}


def onnx_tensors(info: AdapterInfo, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The adapter's tensors under the graph's names, in the graph's layout (see module doc)."""
    import numpy as np
    from safetensors.numpy import load_file

    peft = load_file(str(info.path / "adapter_model.safetensors"))
    peft = {_strip_prefix(k): v.astype(np.float32) for k, v in peft.items()}
    scale = info.alpha / info.rank
    tensors = {}
    for name in shapes:
        match = _LORA_INIT.match(name)
        module, ab = match["module"], match["ab"]
        weight = _peft_weight(peft, module, ab, shapes)
        if weight is None:
            raise InputError(
                f"adapter {info.name} has no LoRA weights for {module}, which the built graph "
                "adapts; switchable adapters of one base must share target modules"
            )
        tensors[name] = np.ascontiguousarray(weight.T * (scale if ab == "B" else 1.0))
    return tensors


def _strip_prefix(key: str) -> str:
    key = key.removeprefix("base_model.model.")
    return key.replace(".default.weight", ".weight")


def _peft_weight(
    peft: dict[str, Any], module: str, ab: str, shapes: dict[str, tuple[int, ...]]
) -> Any | None:
    """PEFT weight for a graph module: under its own name, or sliced from the fused module the
    builder split (lora_A shared, lora_B rows in the order of the parts)."""
    prefix, block, linear = module.rsplit(".", 2)
    peft_block = "self_attn" if block == "attn" else block
    direct = peft.get(f"{prefix}.{peft_block}.{linear}.lora_{ab}.weight")
    if direct is not None or linear not in _FUSED:
        return direct
    fused, part = _FUSED[linear]
    weight = peft.get(f"{prefix}.{peft_block}.{fused}.lora_{ab}.weight")
    if weight is None or ab == "A":
        return weight
    sizes = [shapes[f"{prefix}.{block}.{s}.lora_B.MatMul.weight"][1] for s in _PARTS[fused]]
    start = sum(sizes[:part])
    return weight[start : start + sizes[part]]


def self_check(expected: dict[str, Any], actual: dict[str, Any]) -> float:
    """Largest difference between the builder's baked tensors and ours for the build adapter;
    a mismatch means the name/layout mapping is wrong, so nothing would work at runtime."""
    import numpy as np

    worst = 0.0
    for name, value in expected.items():
        ours = actual[name]
        if ours.shape != value.shape:
            raise RunError(f"adapter layout mismatch for {name}: {ours.shape} vs {value.shape}")
        worst = max(worst, float(np.abs(ours - value).max()))
    if worst > _SELF_CHECK_TOL:
        raise RunError(f"adapter conversion does not match the builder (max diff {worst:.3g})")
    return worst


def write_adapter(tensors: dict[str, Any], path: Path) -> None:
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(
        {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in tensors.items()}
    )
    adapter.export_adapter(str(path))
