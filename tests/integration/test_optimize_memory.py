"""The streaming int4 pass (`slmforge.optimize.builder_run`) writes exactly what the ONNX
Runtime GenAI builder's own whole-graph pass writes, for untied and tied embeddings, every
quantization method, and weights split into many column chunks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _build(module: str, model: Path, out: Path, algo: str, chunk: int | None = None) -> Path:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    if chunk is not None:
        env["SLMFORGE_QUANT_CHUNK_ELEMENTS"] = str(chunk)
    command = [sys.executable, "-m", module, "-i", str(model), "-o", str(out), "-p", "int4"]
    command += ["-e", "cpu", "-c", str(out.parent / f"{out.name}-cache"), "--extra_options"]
    command += ["hf_token=false", f"algo_config={algo}"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _contents(folder: Path) -> tuple[dict, dict]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(folder / "model.onnx").graph
    nodes = {node.name: node for node in graph.node}
    return nodes, {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _variant(tiny_model, root: Path, arch: str, tied: bool) -> Path:
    """The tiny `arch` re-initialised with an intermediate size the builder's rtn and k_quant
    passes accept (they fail on 344, not a multiple of the block), tied or not."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from slmforge.models.load import load_tokenizer

    source = tiny_model(arch)
    config = AutoConfig.from_pretrained(source)
    config.tie_word_embeddings, config.intermediate_size = tied, 512
    torch.manual_seed(0)
    folder = root / f"{arch}-{'tied' if tied else 'untied'}"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("arch", "tied", "algo"),
    [
        ("llama", False, "default"),
        ("qwen2", True, "default"),
        ("llama", False, "k_quant"),
        ("mistral", False, "rtn"),
    ],
)
def test_streaming_pass_writes_what_the_builder_writes(tiny_model, tmp_path, arch, tied, algo):
    model = _variant(tiny_model, tmp_path, arch, tied)
    reference = _build("onnxruntime_genai.models.builder", model, tmp_path / "builder", algo)
    # 4096 elements: every weight of the tiny model is quantized in several column chunks.
    ours = _build("slmforge.optimize.builder_run", model, tmp_path / "ours", algo, chunk=4096)
    if algo == "default":
        for name in ("model.onnx", "model.onnx.data"):
            assert (ours / name).read_bytes() == (reference / name).read_bytes(), name
    # rtn and k_quant sort the builder's graph their own way: same nodes, another order.
    ours_nodes, ours_weights = _contents(ours)
    ref_nodes, ref_weights = _contents(reference)
    assert ours_nodes == ref_nodes
    assert ours_weights.keys() == ref_weights.keys()
    for name, array in ref_weights.items():
        assert ours_weights[name].tobytes() == array.tobytes(), name
    ops = {node.op_type for node in ours_nodes.values()}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    if tied:
        assert "GatherBlockQuantized" in ops


def test_column_chunks_are_even_and_cover_every_column():
    from slmforge.optimize.builder_run import column_chunks

    chunks = column_chunks(rows=100, cols=1001, limit=1000)
    assert chunks[0] == (0, 10) and chunks[-1] == (1000, 1001)
    assert all((stop - start) % 2 == 0 for start, stop in chunks[:-1])
    assert [c for start, stop in chunks for c in range(start, stop)] == list(range(1001))


def test_a_build_that_cannot_fit_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    from slmforge.config.optimize import OptimizeConfig
    from slmforge.errors import InputError
    from slmforge.optimize import memory
    from slmforge.optimize.run import estimate, optimize

    cfg = OptimizeConfig(model=str(tiny_model("llama")), out=tmp_path / "int4")
    needed = estimate(cfg, tiny_model("llama"))
    assert needed.verify is not None and needed.total >= needed.build.total > memory.BUILD_RUNTIME
    monkeypatch.setattr(memory, "available_bytes", lambda device: needed.total - 1)
    with pytest.raises(InputError, match=r"optimize: this model needs ~.* is available; what "):
        optimize(cfg)
    assert list(tmp_path.iterdir()) == []
    message = ""
    try:
        memory.check_optimize_fits(needed, available=needed.build.total // 2)
    except InputError as exc:
        message = str(exc)
    assert "build ~" in message and "verify ~" in message and "GiB is available" in message


@pytest.mark.parametrize("rounded", [False, True])
def test_chunked_head_and_embedding_give_the_same_logits(tiny_model, monkeypatch, rounded):
    """Verification computes a big LM head / embedding in row chunks; the logits must be those
    of the whole-weight cast (and of the whole-table rounding)."""
    import numpy as np

    from slmforge.models.load import load_causal_lm
    from slmforge.optimize import verify

    model = load_causal_lm(tiny_model("qwen2"), dtype="auto")
    runs = [verify.OnnxRun(3, [5, 17, 300, 22, 9, 41], None), verify.OnnxRun(2, [7, 8, 9], None)]
    rounding = verify.Rounding(4, 32, tied=True) if rounded else None
    whole = verify._reference_logits(model, runs, rounding)
    monkeypatch.setattr(verify, "BIG_WEIGHT", 0)
    monkeypatch.setattr(verify, "_chunk_forward", _small_chunks(verify._chunk_forward))
    chunked = verify._reference_logits(model, runs, rounding)
    for a, b in zip(whole, chunked, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def _small_chunks(chunk_forward):
    return lambda module, rounding: chunk_forward(module, rounding, rows=100)
