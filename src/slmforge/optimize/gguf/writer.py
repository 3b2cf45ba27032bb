"""Write a Hugging Face model as one GGUF file, one tensor at a time.

The GGUF header lists every tensor's name, shape and type before any data, so the writer
plans first from the safetensors headers alone (no weights read), writes the header, then
loads, converts, quantizes and appends each tensor in turn: memory holds about one tensor,
never the model. Quantization is the `gguf` package's (`gguf.quants.quantize`, the reference
implementation llama.cpp ships for Python); q4_k_m, which it cannot produce, goes through
llama.cpp's own quantizer (llama-cpp-python) from an f16 file.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import InputError, RunError
from slmforge.optimize.gguf.families import Family, family_of, gguf_name, permute_rows, rope_heads
from slmforge.optimize.gguf.tokenizer import Vocabulary, add_vocabulary, model_name

# Tensors whose values are factors, not weights: always f32 (llama.cpp requires it)
_ALWAYS_F32 = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
# q4_0 keeps the embedding and LM head at 8 bits: they set every logit, and llama.cpp's own
# q4_0 recipe gives them a higher type too (Q6_K there, which gguf-py cannot produce)
_HEAD_TENSORS = ("token_embd.weight", "output.weight")
Delta = Callable[[str], Any]  # Hugging Face tensor name -> LoRA delta [out, in] or None


@dataclass
class PlannedTensor:
    name: str  # llama.cpp's name
    shape: tuple[int, ...]  # numpy order ([rows, columns] for a matrix)
    qtype: Any  # gguf.GGMLQuantizationType
    load: Callable[[], Any]  # -> float32 array in llama.cpp's layout


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder}: no config.json (not a Hugging Face model folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder}: no *.safetensors weights (GGUF export reads safetensors)")
    return files


def tensor_type(precision: str, name: str, shape: tuple[int, ...]) -> Any:
    """The GGML type of one tensor: 1-D tensors (norms, biases) and RoPE factors stay f32;
    a row length that is not a whole number of blocks falls back to f16, as llama.cpp's
    converter does."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or name in _ALWAYS_F32:
        return types.F32
    wanted = {
        "f32": types.F32,  # not offered to users; benchmarks compare against it
        "f16": types.F16,
        "q8_0": types.Q8_0,
        "q4_0": types.Q4_0,
        "q4_k_m": types.F16,  # the stage llama.cpp's quantizer starts from
    }
    qtype = wanted[precision]
    if precision == "q4_0" and name in _HEAD_TENSORS:
        qtype = types.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else types.F16


def file_type(precision: str) -> int:
    import gguf

    kinds = gguf.LlamaFileType
    return {
        "f32": kinds.ALL_F32,
        "f16": kinds.MOSTLY_F16,
        "q8_0": kinds.MOSTLY_Q8_0,
        "q4_0": kinds.MOSTLY_Q4_0,
        "q4_k_m": kinds.MOSTLY_F16,  # the f16 stage; llama.cpp's quantizer sets its own
    }[precision]


def nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = 1
    for dim in shape:
        count *= dim
    return count // block * size


def source_tensors(folder: Path) -> Iterator[tuple[Path, str, tuple[int, ...]]]:
    """(file, name, shape) of every tensor, from the safetensors headers only."""
    from safetensors import safe_open

    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (not iterable)
                yield path, name, tuple(handle.get_slice(name).get_shape())


def _loader(path: Path, hf_name: str, heads: int | None, delta: Delta | None) -> Callable[[], Any]:
    def load() -> Any:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tensor = handle.get_tensor(hf_name).float().numpy()  # any dtype, bf16 included
        change = delta(hf_name) if delta is not None else None
        if change is not None:
            tensor = tensor + change  # merged adapter: W + alpha/r * B @ A
        return permute_rows(tensor, heads) if heads else tensor

    return load


def plan_tensors(
    folder: Path, config: dict[str, Any], precision: str, delta: Delta | None = None
) -> list[PlannedTensor]:
    """Every tensor of the GGUF file, in order, with its type; nothing is loaded yet."""
    import numpy as np

    family = family_of(config)
    tied = bool(config.get("tie_word_embeddings"))
    planned = [
        PlannedTensor(
            name,
            tuple(values.shape),
            tensor_type(precision, name, values.shape),
            lambda values=values: np.asarray(values, dtype=np.float32),
        )
        for name, values in family.extra_tensors(config).items()
    ]
    for path, hf_name, shape in source_tensors(folder):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / shared with the embedding
        name = gguf_name(family, hf_name)
        if name is None:
            raise InputError(
                f"{folder}: tensor {hf_name} has no place in llama.cpp's {family.arch} "
                "architecture (a model variant this exporter does not know)"
            )
        heads = rope_heads(family, name, config)
        loader = _loader(path, hf_name, heads, delta)
        planned.append(PlannedTensor(name, shape, tensor_type(precision, name, shape), loader))
    if not tied and not any(t.name == "output.weight" for t in planned):
        raise InputError(f"{folder}: no lm_head.weight and the embeddings are not tied")
    return planned


def add_model_metadata(
    writer: Any, family: Family, config: dict[str, Any], name: str, precision: str
) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    family.hparams(writer, config)
    writer.add_file_type(int(file_type(precision)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_file(
    out: Path,
    arch: str,
    metadata: Callable[[Any], None],
    tensors: list[PlannedTensor],
    on_tensor: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Write `out`: header, metadata and tensor table, then each tensor's data in turn.
    Returns how many tensors got each GGML type."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(None, arch)
    metadata(writer)
    for tensor in tensors:
        size = nbytes(tensor.shape, tensor.qtype)
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), size, tensor.qtype)
    counts: dict[str, int] = {}
    try:
        writer.write_header_to_file(path=out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            data = tensor.load()
            if tuple(data.shape) != tensor.shape:
                raise RunError(f"{tensor.name}: shape {data.shape}, planned {tensor.shape}")
            writer.write_tensor_data(gguf.quants.quantize(data, tensor.qtype))
            counts[tensor.qtype.name] = counts.get(tensor.qtype.name, 0) + 1
            if on_tensor is not None:
                on_tensor()
    finally:
        writer.close()
    return counts


def write_model(
    folder: Path,
    out: Path,
    precision: str,
    vocab: Vocabulary,
    delta: Delta | None = None,
    on_tensor: Callable[[], None] | None = None,
) -> dict[str, int]:
    """The model in `folder` (plus a merged adapter `delta`) as `out` at `precision`."""
    config = read_config(folder)
    family = family_of(config)
    tensors = plan_tensors(folder, config, precision, delta)

    def metadata(writer: Any) -> None:
        name = model_name(folder.name, vocab.tokens)
        add_model_metadata(writer, family, config, name, precision)
        add_vocabulary(writer, vocab)

    if precision != "q4_k_m":
        return write_file(out, family.arch, metadata, tensors, on_tensor)
    stage = out.with_name(out.stem + ".f16-stage.gguf")
    try:
        write_file(stage, family.arch, metadata, tensors, on_tensor)
        llama_cpp_quantize(stage, out, "q4_k_m")
    finally:
        stage.unlink(missing_ok=True)
    return _type_counts(out)


def _type_counts(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type a file holds (llama.cpp chose them for q4_k_m)."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def llama_cpp_module() -> Any:
    """llama-cpp-python, or an InputError that says what to install."""
    try:
        import llama_cpp
    except ImportError:
        raise InputError(
            "q4_k_m needs llama.cpp's k-quant quantizer (gguf-py has none): pip install "
            "llama-cpp-python==0.3.36 (it builds llama.cpp: cmake and a C++ compiler), or "
            "choose q4_0"
        ) from None
    return llama_cpp


def llama_cpp_quantize(source: Path, out: Path, kind: str) -> None:
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[kind]
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RunError(f"llama.cpp could not quantize {source.name} to {kind} (status {status})")
