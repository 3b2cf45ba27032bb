"""Run the ONNX Runtime GenAI builder with weight-only quantization done one MatMul at a time.

`python -m slmforge.optimize.builder_run ARGS` takes exactly the builder's own arguments. The
builder reads the Hugging Face model, emits a graph whose MatMul weights are float, and then
quantizes in `to_nbits`: it serializes the whole graph to one ModelProto with every weight in
fp32 (4 bytes a parameter, beside the 2 of the bf16 model still loaded) and runs ONNX Runtime's
`MatMulNBitsQuantizer` over it, which adds the packed weights before dropping the float ones.
On a 0.5B model that peaked at ~9 bytes a parameter, so Phi-3-mini needed ~34 GB.

Here `to_nbits` is replaced by a pass over the graph in place: for each MatMul it turns that one
weight into fp32, runs the same `MatMulNBitsQuantizer` (same algorithm, bits, block size,
symmetry, accuracy level) on a one-node model, puts the resulting `MatMulNBits` node and its
initializers in place of the MatMul, and frees the source weight when nothing else reads it.
The output is byte-identical to the builder's (tests/integration/test_optimize_memory.py);
peak memory is the loaded model plus the packed weights plus one matrix. Configurations this
pass does not cover (QDQ format, quantized embeddings, mixed-bit overrides, CUDA prepacking)
run the builder's own `to_nbits` unchanged.

With `--slmforge-weights FILE` (GPTQ, optimize/gptq.py), the decoder layers' MatMuls (and an
untied LM head's) take their packed weights from FILE instead of rounding: the node and
initializer names and layouts stay the ones the quantizer gives (`precomputed_arrays` maps the
builder's nodes to the Hugging Face modules, fused q/k/v included), and each is checked against
the float weight it replaces.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
from collections.abc import Callable
from typing import Any

# The builder package puts its folder on sys.path and imports its modules by their short names
# (`builders.base`); patch those exact module objects.
import onnxruntime_genai.models  # noqa: F401  (side effect: sys.path)

MODULE = "onnxruntime_genai.models.builder"


def _needs_builder_pass(model: Any) -> str | None:
    """Why this build must use the builder's own whole-graph pass, or None."""
    attrs = model.quant_attrs
    if attrs["use_qdq"]:
        return "QDQ format"
    if "Gather" in attrs["op_types_to_quantize"] and any(
        node.op_type == "Gather" and node.inputs[0].const_value is not None
        for node in model.model.graph
    ):
        # (A tied embedding that reads lm_head's packed weights is a GatherBlockQuantized
        # node already: nothing for the Gather pass to do, and this pass handles it.)
        return "quantized embeddings"
    if getattr(model, "int4_customized_weight_config", None):
        return "per-node bit overrides"
    if getattr(model, "exact_quant_overrides", None) or getattr(
        model, "exact_quant_override_names", None
    ):
        return "exact quantization overrides"
    if model.ep == "cuda" and model.matmul_attrs.get("weights_prepacked", 0) > 0:
        return "CUDA weight prepacking"
    return None


# fp32 weight elements quantized at once (64 MiB); the variable lets tests force many chunks.
CHUNK_ELEMENTS = int(os.environ.get("SLMFORGE_QUANT_CHUNK_ELEMENTS", 16 * 1024 * 1024))


def _column_reader(model: Any, weight: Any) -> Callable[[int, int], Any]:
    """Columns [start, stop) of a MatMul weight as a C-contiguous fp32 array.

    The builder registers each weight as a lazy cast of a torch tensor (recorded by
    `make_initializer` below); slicing that tensor before the cast keeps the fp32 copy to one
    chunk. A weight with no recorded tensor is read whole.
    """
    import numpy as np
    import torch

    source = model.__dict__.get("_slmforge_sources", {}).get(weight.name)
    if isinstance(source, torch.Tensor) and tuple(source.shape) == tuple(weight.shape):
        return lambda start, stop: source[:, start:stop].to(torch.float32).contiguous().numpy()
    whole = np.asarray(weight.const_value.numpy(), dtype=np.float32)
    return lambda start, stop: np.ascontiguousarray(whole[:, start:stop])


def column_chunks(rows: int, cols: int, limit: int = CHUNK_ELEMENTS) -> list[tuple[int, int]]:
    """Column ranges of at most ~`limit` elements, each an even number of columns wide.

    Quantization blocks run down one column (along K), so columns quantize independently; an
    even width keeps zero points that pack two per byte aligned when the chunks are joined.
    """
    step = max(2, limit // max(rows, 1))
    step -= step % 2
    return [(start, min(start + step, cols)) for start in range(0, cols, step)]


def _one_matmul_model(node: Any, weight_name: str, array: Any) -> Any:
    """A model holding only `node` (a MatMul) and an fp32 weight, named as in the graph."""
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = array.shape
    x, y = node.inputs[0].name, node.outputs[0].name
    graph = helper.make_graph(
        [helper.make_node("MatMul", [x, weight_name], [y], name=node.name)],
        "one_matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", cols])],
        [numpy_helper.from_array(array, weight_name)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _quantize_one(model: Any, node: Any, weight_name: str, array: Any) -> Any:
    """The one-node model after ONNX Runtime's quantizer, configured as the builder would."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    attrs = model.quant_attrs
    method = getattr(model, "quantization_algo", "default")
    algo_config = None
    if method != "default":
        algo_config = model.make_algo_config(method, {node.name: {"bits": attrs["bits"]}})
    quantizer = MatMulNBitsQuantizer(
        model=_one_matmul_model(node, weight_name, array),
        bits=attrs["bits"],
        block_size=attrs["matmul_block_size"],
        is_symmetric=attrs["is_symmetric"],
        accuracy_level=attrs["accuracy_level"],
        nodes_to_exclude=[],
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=attrs["op_types_to_quantize"],
        algo_config=algo_config,
    )
    quantizer.process()
    return quantizer.model.model


def _nodes_and_arrays(one: Any) -> tuple[list[Any], dict[str, Any]]:
    """Copy what a quantized one-node model holds out of it, so the protobuf (which keeps
    the removed fp32 weight's memory until it is itself freed) can go at once."""
    from onnx import NodeProto, numpy_helper

    nodes = []
    for proto in one.graph.node:
        node = NodeProto()
        node.CopyFrom(proto)
        nodes.append(node)
    return nodes, {t.name: numpy_helper.to_array(t).copy() for t in one.graph.initializer}


def join_chunks(
    chunks: list[tuple[list[Any], dict[str, Any]]], cols: int
) -> tuple[list[Any], dict[str, Any]]:
    """The quantized node(s) and initializers of a whole weight from its column chunks."""
    import numpy as np
    from onnx import helper

    nodes, first = chunks[0]
    for proto in nodes:
        for attribute in proto.attribute:
            if attribute.name == "N":
                attribute.CopyFrom(helper.make_attribute("N", cols))
    if len(chunks) == 1:
        return nodes, first
    arrays = {
        name: np.concatenate([arrays[name] for _, arrays in chunks], axis=0) for name in first
    }
    return nodes, arrays


def quantize_weight(model: Any, node: Any, weight: Any) -> tuple[list[Any], dict[str, Any]]:
    rows, cols = weight.shape
    read = _column_reader(model, weight)
    chunks = [
        _nodes_and_arrays(_quantize_one(model, node, weight.name, read(start, stop)))
        for start, stop in column_chunks(rows, cols)
    ]
    nodes, arrays = join_chunks(chunks, cols)
    if PRECOMPUTED is not None:
        found = precomputed_arrays(PRECOMPUTED, node.name, weight.name, cols)
        if found is None and _LAYER_MATMUL.match(node.name):
            raise SystemExit(f"slmforge: no precomputed weights for {node.name}")
        if found is not None:
            arrays = _replace_arrays(arrays, found)
            _check_close(model, weight, arrays)
    return nodes, arrays


# Precomputed packed weights (`--slmforge-weights`), opened lazily by `main`.
PRECOMPUTED: Any = None
_LAYER_MATMUL = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul$")
_LM_HEAD = "/lm_head/MatMul"  # precomputed when GPTQ quantized an untied head
_HF_PARENT = {"attn": "self_attn", "mlp": "mlp"}
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}  # the builder fuses these
_HALVES = {"gate_proj": 0, "up_proj": 1}  # of a checkpoint's fused gate_up_proj (phi3)
_PACKED_SUFFIXES = ("_Q4", "_Q8", "_scales", "_zero_points")


def precomputed_arrays(store: Any, node_name: str, weight_name: str, cols: int) -> dict | None:
    """The packed arrays `store` (a safetensors file, keys `<HF module><suffix>`) holds for a
    builder MatMul node, named as the quantizer names them; None outside the decoder layers
    and the LM head, and for an LM head the store does not hold (a tied one).
    Rows are output channels, so a fused node's arrays are its modules' arrays stacked."""
    import numpy as np

    keys = set(store.keys())
    if node_name == _LM_HEAD:
        prefix, proj = "", "lm_head"
    elif (match := _LAYER_MATMUL.match(node_name)) is not None:
        layer, part, proj = match.groups()
        prefix = f"model.layers.{layer}.{_HF_PARENT[part]}."
    else:
        return None
    sources: list[tuple[str, slice]] = []
    if f"{prefix}{proj}_scales" in keys:
        sources = [(prefix + proj, slice(None))]
    elif proj in _FUSED and all(f"{prefix}{p}_scales" in keys for p in _FUSED[proj]):
        sources = [(prefix + p, slice(None)) for p in _FUSED[proj]]
    elif proj in _HALVES and f"{prefix}gate_up_proj_scales" in keys:
        half = _HALVES[proj]
        sources = [(prefix + "gate_up_proj", slice(half * cols, (half + 1) * cols))]
    if not sources:
        return None
    return {
        weight_name + suffix: np.concatenate(
            [store.get_slice(name + suffix)[rows] for name, rows in sources]
        )
        for suffix in _PACKED_SUFFIXES
        if f"{sources[0][0]}{suffix}" in keys
    }


def _replace_arrays(arrays: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """The quantizer's arrays with their contents replaced by `found`, same names and shapes."""
    if found.keys() != arrays.keys():
        raise SystemExit(
            f"slmforge: precomputed weights {sorted(found)} do not match the build's "
            f"{sorted(arrays)} (another block size or symmetry?)"
        )
    out = {}
    for name, array in arrays.items():
        if found[name].size != array.size:
            raise SystemExit(
                f"slmforge: precomputed {name} has {found[name].shape}, not {array.shape}"
            )
        out[name] = found[name].astype(array.dtype).reshape(array.shape)
    return out


MAX_RELATIVE_ERROR = 0.5  # int4 GPTQ is ~0.1; a weight of another module or layout is ~1.4


def _check_close(model: Any, weight: Any, arrays: dict[str, Any]) -> None:
    """Refuse packed weights far from the float weight they replace (a wrong mapping); read in
    the pass's column chunks, so the check holds no more than quantizing does."""
    import numpy as np

    bits = model.quant_attrs["bits"]
    rows, cols = weight.shape
    packed = arrays[f"{weight.name}_Q{bits}"]
    scales = arrays[f"{weight.name}_scales"].astype(np.float32).reshape(cols, -1)
    zeros = arrays.get(f"{weight.name}_zero_points")
    zeros = None if zeros is None else zeros.reshape(cols, -1)
    read = _column_reader(model, weight)
    error = norm = 0.0
    for start, stop in column_chunks(rows, cols):
        part = None if zeros is None else zeros[start:stop]
        restored = dequantize_packed(packed[start:stop], scales[start:stop], part, bits, rows)
        original = read(start, stop).T
        error += float(np.square(restored - original).sum())
        norm += float(np.square(original).sum())
    relative = (error / max(norm, 1e-30)) ** 0.5
    if relative > MAX_RELATIVE_ERROR:
        raise SystemExit(
            f"slmforge: precomputed weights of {weight.name} are far from it "
            f"(relative error {relative:.2f}): wrong module mapping"
        )


def dequantize_packed(packed: Any, scales: Any, zeros: Any, bits: int, rows: int) -> Any:
    """[N, K] floats from `MatMulNBits` arrays (optimize/gptq.py: `pack_matmul_nbits`)."""
    import numpy as np

    n, blocks = scales.shape
    codes = packed.reshape(n, blocks, -1)
    if bits == 4:
        codes = np.stack([codes & 15, codes >> 4], -1).reshape(n, blocks, -1)
    block = codes.shape[-1]
    if zeros is None:
        zero = np.full((n, blocks), 2 ** (bits - 1), dtype=np.float32)
    elif bits == 4:
        zeros = zeros.reshape(n, -1)
        zero = np.stack([zeros & 15, zeros >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zero = zeros.reshape(n, blocks).astype(np.float32)
    values = (codes.astype(np.float32) - zero[..., None]) * scales[..., None]
    return values.reshape(n, blocks * block)[:, :rows]


def _graft(model: Any, node: Any, weight: Any, nodes: list[Any], arrays: dict[str, Any]) -> None:
    """Replace `node` in the graph by the quantized `nodes` reading `arrays`."""
    import onnx_ir as ir
    from onnx import helper

    graph = model.model.graph
    values = {node.inputs[0].name: node.inputs[0]}
    for name, array in arrays.items():
        # The builder may already refer to a packed weight by name (a tied embedding's
        # GatherBlockQuantized reads `lm_head.MatMul.weight_Q4`): fill that value in.
        value = model.values.get(name) or ir.Value(name=name)
        value.const_value = ir.Tensor(array, name=name)
        value.dtype, value.shape = value.const_value.dtype, value.const_value.shape
        graph.register_initializer(value)
        values[name] = value
    new_nodes = []
    for proto in nodes:
        attributes = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        new = ir.node(
            proto.op_type,
            inputs=[values[name] for name in proto.input],
            attributes=attributes,
            domain=proto.domain,
            name=proto.name,
            num_outputs=len(proto.output),
        )
        for output, name in zip(new.outputs, proto.output, strict=True):
            values[name] = output
        new_nodes.append(new)
    old_out = node.outputs[0]
    new_out = values[old_out.name]
    new_out.dtype, new_out.shape = old_out.dtype, old_out.shape
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, [old_out], [new_out])
    if not weight.uses():
        graph.initializers.pop(weight.name)
        weight.const_value = None
        model.__dict__.get("_slmforge_sources", {}).pop(weight.name, None)


def streaming_to_nbits(model: Any, builder_pass: Any) -> Any:
    """The builder's `to_nbits`, one MatMul at a time (see the module docstring)."""
    reason = _needs_builder_pass(model)
    if reason is not None:
        print(f"slmforge: {reason}: using the builder's whole-graph quantization pass")
        return builder_pass(model)
    excluded = set(model.quant_attrs["nodes_to_exclude"])
    graph = model.model.graph
    targets = [
        node
        for node in graph
        if node.op_type == "MatMul"
        and node.name not in excluded
        and len(node.inputs) == 2
        and node.inputs[1] is not None
        and node.inputs[1].const_value is not None
        and len(node.inputs[1].shape) == 2
    ]
    for done, node in enumerate(targets, 1):
        weight = node.inputs[1]
        _graft(model, node, weight, *quantize_weight(model, node, weight))
        if done % 16 == 0 or done == len(targets):
            print(f"slmforge: quantized {done}/{len(targets)} MatMul weights", flush=True)
    model.model.opset_imports.setdefault("com.microsoft", 1)
    return model.model


def install() -> None:
    import builders.base
    import torch

    model_class = builders.base.Model
    builder_pass = model_class.to_nbits
    make_initializer = model_class.make_initializer

    def to_nbits(self: Any) -> Any:
        return streaming_to_nbits(self, builder_pass)

    def recording_make_initializer(self: Any, tensor: Any, /, name: str, **kwargs: Any) -> None:
        if isinstance(tensor, torch.Tensor) and not kwargs.get("raw"):
            self.__dict__.setdefault("_slmforge_sources", {})[name] = tensor
        make_initializer(self, tensor, name, **kwargs)

    model_class.to_nbits = to_nbits
    model_class.make_initializer = recording_make_initializer


def main(argv: list[str]) -> None:
    global PRECOMPUTED
    if argv[:1] == ["--slmforge-weights"]:
        from safetensors import safe_open

        PRECOMPUTED = safe_open(argv[1], framework="numpy")
        argv = argv[2:]
    install()
    sys.argv = [MODULE, *argv]
    runpy.run_module(MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
