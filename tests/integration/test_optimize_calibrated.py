"""`slmforge optimize --int4-algo gptq|awq` on a tiny model: real builds, run by ONNX Runtime,
verified, closer to the source than round-to-nearest, same layout, adapters still switchable.

The tiny llama is given outlier channels first (a few norm channels x16, the weight columns
reading them /16: the same float function), as trained LLMs have them; on a model without
any, every int4 method rounds about equally well and the comparison would measure noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slmforge.artifacts import read_manifest
from slmforge.cli.main import main
from slmforge.config.optimize import OptimizeConfig
from slmforge.data.sample import write_sample
from slmforge.optimize.run import optimize

pytestmark = pytest.mark.integration

CALIBRATION = {"calibration_samples": 16, "calibration_seq_len": 256}
VERIFY = {"verify_prompts": 4, "verify_tokens": 12}


@pytest.fixture(scope="module")
def travel(tmp_path_factory) -> dict[str, Path]:
    """The sample travel data split into calibration rows and held-out rows."""
    root = tmp_path_factory.mktemp("travel")
    lines = write_sample(root / "all.jsonl").read_text(encoding="utf-8").splitlines(True)
    (root / "calibration.jsonl").write_text("".join(lines[:160]), encoding="utf-8")
    (root / "heldout.jsonl").write_text("".join(lines[160:]), encoding="utf-8")
    return {"calibration": root / "calibration.jsonl", "heldout": root / "heldout.jsonl"}


@pytest.fixture(scope="module")
def outlier_llama(tiny_model, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    from slmforge.models.load import load_tokenizer

    source = tiny_model("llama")
    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            modules = dict(layer.named_modules())
            for norm, readers in (
                ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
            ):
                channels = torch.randperm(model.config.hidden_size, generator=generator)[:4]
                modules[norm].weight[channels] *= 16
                for name in readers:
                    modules[name].weight[:, channels] /= 16
    folder = tmp_path_factory.mktemp("outlier") / "llama"
    model.save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def builds(outlier_llama, travel, tmp_path_factory) -> dict[str, Path]:
    """int4 builds of the outlier llama: round-to-nearest, GPTQ and AWQ, each verified."""
    root = tmp_path_factory.mktemp("builds")
    out = {}
    for algo in ("default", "gptq", "awq"):
        cfg = OptimizeConfig(
            model=str(outlier_llama),
            out=root / algo,
            int4_algo=algo,
            calibration_data=travel["calibration"] if algo != "default" else None,
            verify_data=travel["heldout"],
            **CALIBRATION,
            **VERIFY,
        )
        out[algo] = optimize(cfg)
    return out


def _heldout_kl(build: Path, source: Path, data: Path, rows: int = 12) -> float:
    """Mean KL(source || build) of the next-token distributions, teacher-forced over held-out
    conversations rendered with the chat template (real ONNX Runtime session)."""
    from slmforge.data.formats import read_examples
    from slmforge.models.load import load_causal_lm
    from slmforge.optimize.verify import mean_kl
    from slmforge.runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine(build)
    model = load_causal_lm(source)
    kls = []
    for example in read_examples(data)[:rows]:
        text = engine.tokenizer.apply_chat_template(example.messages, tokenize=False)
        ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            reference = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        kls.append(mean_kl([reference], [np.asarray(engine.logits(ids), dtype=np.float32)]))
    return float(np.concatenate(kls).mean())


def test_calibrated_builds_are_closer_to_the_source_than_round_to_nearest(
    builds, outlier_llama, travel
):
    kl = {
        algo: _heldout_kl(path, outlier_llama, travel["heldout"]) for algo, path in builds.items()
    }
    assert kl["gptq"] < 0.85 * kl["default"], kl
    assert kl["awq"] < 0.85 * kl["default"], kl


def test_calibrated_builds_keep_the_layout_and_record_their_settings(builds, travel):
    import onnx

    def layout(folder: Path) -> dict[str, tuple]:
        graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
        nodes = {n.name: (n.op_type, tuple(n.input)) for n in graph.node}
        return nodes | {t.name: tuple(t.dims) for t in graph.initializer}

    reference = layout(builds["default"])
    sha = read_manifest(builds["gptq"]).details["quantization"]["calibration"]["sha256"]
    for algo in ("gptq", "awq"):
        assert layout(builds[algo]) == reference, algo
        manifest = read_manifest(builds[algo])
        quantization = manifest.details["quantization"]
        assert quantization["algo"] == algo and quantization["bits"] == 4
        assert quantization["calibration"]["samples"] == 16
        assert quantization["calibration"]["sha256"] == sha
        assert manifest.config["calibration_data"] == str(travel["calibration"])
        assert manifest.metrics["parity"]["base"]["kl"] < 0.15


def test_gptq_lowers_every_layer_reconstruction_error(tiny_model, travel):
    """Per Linear, on the calibration activations it was computed from: GPTQ < RTN."""
    from slmforge.models.load import load_tokenizer
    from slmforge.optimize import calibration
    from slmforge.optimize.gptq import gptq, layer_hessians, rtn

    source = tiny_model("llama")
    calib = calibration.calibration_windows(
        travel["calibration"], load_tokenizer(source), 8, 128, 2048
    )
    model = calibration.load_source(source, trust_remote_code=False)
    for _, layer, inputs in calibration.layer_by_layer(model, calib.windows, "test"):
        for name, hessian in layer_hessians(layer, inputs).items():
            weight = dict(layer.named_modules())[name].weight.detach()

            def error(quantized, weight=weight, hessian=hessian) -> float:
                delta = quantized.dequantize() - weight  # tr(D H D^T) = ||X D^T||^2
                return float(torch.einsum("oi,ij,oj->", delta, hessian, delta))

            assert error(gptq(weight, hessian)) < error(rtn(weight)), name


def test_awq_lowers_every_layer_reconstruction_error(outlier_llama, travel):
    """On the calibration activations of the float model: the weight the AWQ build rounds
    (scaled, clipped), rounded to nearest and scaled back, is never further than plain RTN for
    any Linear (o_proj under grouped-query attention is left as it is) and closer per layer."""
    from slmforge.models.load import load_tokenizer
    from slmforge.optimize import calibration
    from slmforge.optimize.awq import scale_model
    from slmforge.optimize.gptq import layer_hessians, rtn

    calib = calibration.calibration_windows(
        travel["calibration"], load_tokenizer(outlier_llama), 8, 128, 2048
    )
    scaled = calibration.load_source(outlier_llama, trust_remote_code=False)
    applied = scale_model(scaled, calib.windows, 4, 32, True)
    reads = {a.module(name): a.scale for a in applied for name in a.group.linears}
    writes = {a.module(a.group.producer): a.scale for a in applied}
    awq_modules = dict(scaled.named_modules())
    model = calibration.load_source(outlier_llama, trust_remote_code=False)
    for prefix, layer, inputs in calibration.layer_by_layer(model, calib.windows, "test"):
        totals = {"awq": 0.0, "rtn": 0.0}
        for name, hessian in layer_hessians(layer, inputs).items():
            full = f"{prefix}.{name}"
            weight = dict(layer.named_modules())[name].weight.detach()
            rounded = rtn(awq_modules[full].weight.detach().float()).dequantize()
            rounded = rounded / reads.get(full, 1.0)  # it reads x / s ...
            rounded = (
                rounded * writes.get(full, torch.ones(len(weight)))[:, None]
            )  # ... writes y / s

            def error(effective, weight=weight, hessian=hessian) -> float:
                delta = effective - weight  # tr(D H D^T) = ||X D^T||^2
                return float(torch.einsum("oi,ij,oj->", delta, hessian, delta))

            awq, plain = error(rounded), error(rtn(weight).dequantize())
            assert awq <= plain * 1.001, full
            totals["awq"] += awq
            totals["rtn"] += plain
        assert totals["awq"] < 0.9 * totals["rtn"], (prefix, totals)


@pytest.fixture(scope="module")
def outlier_adapters(llama_adapters, outlier_llama, tmp_path_factory) -> dict[str, Path]:
    """The tiny llama's adapters as plain PEFT folders of the outlier llama (the same float
    function, so they mean the same there): AWQ scales its outlier channels by ~16, which an
    adapter that was not rewritten for the scaled base would get wrong."""
    root = tmp_path_factory.mktemp("outlier-adapters")
    out = {}
    for name, path in llama_adapters.items():
        folder = root / name
        folder.mkdir()
        for file in ("adapter_model.safetensors", "adapter_config.json"):
            (folder / file).write_bytes((path / file).read_bytes())
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(outlier_llama)
        (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
        out[name] = folder
    return out


@pytest.mark.parametrize("algo", ["gptq", "awq"])
def test_switchable_adapters_on_a_calibrated_base(
    algo, outlier_llama, outlier_adapters, travel, tmp_path
):
    """The base is quantized by GPTQ or AWQ (scales folded into the norms, adapters rewritten
    to match); the LoRA MatMuls stay float and switch per request, and each adapter passes
    verification against PyTorch base + that adapter, as close as the base is to its own."""
    out = optimize(
        OptimizeConfig(
            model=str(outlier_llama),
            out=tmp_path / f"{algo}-adapters",
            adapter=[f"{name}={path}" for name, path in outlier_adapters.items()],
            int4_algo=algo,
            calibration_data=travel["calibration"],
            verify_data=travel["heldout"],
            **CALIBRATION,
            **VERIFY,
        )
    )
    manifest = read_manifest(out)
    parity = manifest.metrics["parity"]
    assert set(parity) == {"base", *outlier_adapters}
    assert all(p["kl"] < 0.15 for p in parity.values()), parity
    if algo == "awq":
        calibration = manifest.details["quantization"]["calibration"]
        assert calibration["awq_rescaled_adapters"] == list(outlier_adapters)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--int4-algo gptq needs --calibration-data FILE"),
        (["--calibration-data", "{missing}"], "missing.jsonl: file not found"),
        (["--calibration-data", "{malformed}"], "malformed.jsonl:2"),
        (["--calibration-data", "{empty}"], "empty.jsonl"),
    ],
)
def test_bad_calibration_input_is_one_line_exit_2_nothing_left(
    tiny_model, tmp_path, capsys, extra, message
):
    files = {
        "missing": tmp_path / "missing.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "empty": tmp_path / "empty.jsonl",
    }
    files["malformed"].write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{oops\n")
    files["empty"].write_text("")
    out = tmp_path / "out"
    argv = ["optimize", "--model", str(tiny_model("llama")), "--out", str(out)]
    argv += ["--int4-algo", "gptq", *(arg.format(**files) for arg in extra)]
    code, err = _run(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
