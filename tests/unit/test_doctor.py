"""`slmforge doctor`: check logic on given machine facts, the fit arithmetic, the JSON schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slmforge.cli.main import main
from slmforge.config.doctor import FitConfig
from slmforge.doctor import diagnose
from slmforge.doctor.facts import Cpu, Facts, Gpu, Memory, Nvml, TorchInfo
from slmforge.doctor.fit import (
    GIB,
    check_fit,
    finetune_estimate,
    inference_estimate,
    shape_from_config,
    trainable_params,
)
from slmforge.doctor.packages import torch_check
from slmforge.doctor.report import SCHEMA_VERSION
from slmforge.doctor.run import fit_checks
from slmforge.doctor.system import gpu_check

REPO = Path(__file__).resolve().parents[2]
# Published configs, with their published parameter counts.
LLAMA_3_2_1B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 8192,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
PHI_3_MINI = {
    "model_type": "phi3",
    "vocab_size": 32064,
    "hidden_size": 3072,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 8192,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}
QWEN25_05B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
CPU_ONLY = {
    "cpu": Cpu("Test CPU", 8, 4, 8, ["avx2"]),
    "memory": Memory(32 * GIB, 24 * GIB, None),
    "nvml": None,
    "nvidia_driver": False,
}
CPU_TORCH = TorchInfo("2.13.0+cpu", None, None, False, False, [])
H100 = Gpu("NVIDIA H100 80GB HBM3", "cuda", 80 * GIB, 79 * GIB)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# -- checks on given facts ---------------------------------------------------------------------
def test_cpu_only_machine_is_reported_as_such() -> None:
    facts = Facts(**CPU_ONLY, torch=CPU_TORCH)
    gpu = gpu_check(facts)
    assert gpu.status == "ok" and gpu.summary.startswith("no GPU: CPU only")
    assert gpu.details["accelerator"] == "cpu" and gpu.details["devices"] == []
    torch = torch_check(facts)
    assert torch.status == "ok"
    assert torch.summary == "torch 2.13.0+cpu (CPU build): matches this CPU-only machine"


def test_cpu_torch_on_an_nvidia_machine_is_an_error_with_the_right_wheel() -> None:
    nvml = Nvml("550.54", "12.4", [H100])
    facts = Facts(**{**CPU_ONLY, "nvml": nvml, "nvidia_driver": True}, torch=CPU_TORCH)
    gpu = gpu_check(facts)
    assert gpu.summary == (
        "CUDA: NVIDIA H100 80GB HBM3 (80.0 GiB, 79.0 GiB free), driver 550.54 (CUDA 12.4)"
    )
    check = torch_check(facts)
    assert check.status == "error"
    assert check.summary == "torch 2.13.0+cpu (CPU build) on a machine with an NVIDIA GPU"
    # a CUDA 12.4 driver runs the cu126 build (CUDA minor version compatibility)
    assert check.fix == (
        "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu126"
    )


def test_driver_without_a_usable_gpu_is_a_warning() -> None:
    facts = Facts(**{**CPU_ONLY, "nvidia_driver": True}, torch=None)
    check = gpu_check(facts)
    assert check.status == "warning" and "nvidia-smi" in check.fix


def test_cuda_torch_that_cannot_see_the_gpu_is_an_error() -> None:
    nvml = Nvml("470.1", "11.4", [H100])
    cuda_torch = TorchInfo("2.13.0+cu126", "12.6", None, False, False, [])
    facts = Facts(**{**CPU_ONLY, "nvml": nvml, "nvidia_driver": True}, torch=cuda_torch)
    check = torch_check(facts)
    assert check.status == "error" and "cannot use the GPU" in check.summary


def test_facts_reject_unknown_names() -> None:
    with pytest.raises(TypeError, match="unknown facts: gpu_count"):
        Facts(gpu_count=1)


# -- the fit arithmetic ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "published"),
    [(LLAMA_3_2_1B, 1_235_814_400), (PHI_3_MINI, 3_821_079_552)],
)
def test_parameters_counted_from_config_match_the_published_counts(config, published) -> None:
    assert shape_from_config(config, None).params == published


def test_lora_trainable_parameters_follow_the_default_targets() -> None:
    phi3 = shape_from_config(PHI_3_MINI, None)
    # qkv_proj (3072 -> 9216) and o_proj (3072 -> 3072) in 32 layers, rank 16
    assert trainable_params(phi3, "lora", 16) == 32 * 16 * ((3072 + 9216) + (3072 + 3072))
    assert trainable_params(phi3, "dora", 16) == trainable_params(phi3, "lora", 16) + 32 * (
        9216 + 3072
    )
    assert trainable_params(phi3, "full", 16) == phi3.params


def test_estimates_scale_with_tokens_and_methods() -> None:
    shape = shape_from_config(PHI_3_MINI, None)
    small = finetune_estimate(shape, "lora", "bf16", "cuda", 1, 512)
    double = finetune_estimate(shape, "lora", "bf16", "cuda", 2, 512)
    per_token = ["activations", "logits"]
    for key in per_token:
        assert double.components[key] == 2 * small.components[key]
    qlora = finetune_estimate(shape, "qlora", "bf16", "cuda", 1, 512)
    assert qlora.components["weights"] < small.components["weights"] / 3
    checkpointed = finetune_estimate(shape, "lora", "bf16", "cuda", 1, 512, 16, True)
    assert checkpointed.components["activations"] < small.components["activations"] / 4
    full = finetune_estimate(shape, "full", "bf16", "cuda", 1, 512)
    assert full.components["optimizer"] == shape.params * 12  # fp32 gradient + 2 moments


@pytest.fixture
def phi3_folder(tmp_path: Path) -> Path:
    """A model folder with only config.json: the fit check reads nothing else."""
    folder = tmp_path / "phi3-mini"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PHI_3_MINI), encoding="utf-8")
    return folder


def test_a_run_that_does_not_fit_names_the_largest_batch_that_does(phi3_folder: Path) -> None:
    cfg = FitConfig(model=str(phi3_folder), method="lora", batch_size=64, max_seq_len=1024)
    fit = check_fit(cfg, "cuda", 24 * GIB)
    assert fit.finetune_fits is False and fit.problems == []
    largest = fit.max_batch_size
    shape = fit.shape
    assert finetune_estimate(shape, "lora", "bf16", "cuda", largest, 1024).total <= 24 * GIB
    assert finetune_estimate(shape, "lora", "bf16", "cuda", largest + 1, 1024).total > 24 * GIB
    checks = {check.id: check for check in fit_checks(fit)}
    finetune = checks["fit.finetune"]
    assert finetune.status == "error"
    # finetune switches gradient checkpointing on by itself: the batch offered is with it on
    with_checkpointing = fit.max_batch_size
    while (
        finetune_estimate(
            shape, "lora", "bf16", "cuda", with_checkpointing + 1, 1024, 16, True
        ).total
        <= 24 * GIB
    ):
        with_checkpointing += 1
    assert finetune.fix == (
        f"try --batch-size {with_checkpointing} (the most at 1024 tokens, with gradient "
        "checkpointing, which finetune switches on by itself), --method qlora, or a smaller model"
    )
    assert checks["fit.inference"].status == "ok"
    # merge and optimize run in this machine's memory, which a GPU-only check does not know
    assert checks["fit.merge"].status == checks["fit.optimize"].status == "warning"


def test_a_run_that_fits_only_with_gradient_checkpointing_says_finetune_turns_it_on(
    phi3_folder: Path,
) -> None:
    cfg = FitConfig(model=str(phi3_folder), batch_size=8, max_seq_len=1024)
    shape = check_fit(cfg, "cuda", None).shape
    asked = finetune_estimate(shape, "lora", "bf16", "cuda", 8, 1024)
    checkpointed = finetune_estimate(shape, "lora", "bf16", "cuda", 8, 1024, 16, True)
    available = (asked.total + checkpointed.total) // 2
    fit = check_fit(cfg, "cuda", available)
    finetune = fit_checks(fit)[0]
    assert finetune.status == "warning"
    assert "which slmforge finetune switches on by itself" in finetune.summary
    assert f"--batch-size {fit.max_batch_size} (with --grad-accum" in finetune.fix


def test_the_fit_check_covers_every_stage_of_the_journey(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder), max_seq_len=256), "cpu", 64 * GIB)
    checks = fit_checks(fit)
    assert [c.id for c in checks] == ["fit.finetune", "fit.merge", "fit.optimize", "fit.inference"]
    assert all(c.status == "ok" for c in checks)
    assert "chat, serve and eval" in checks[-1].summary
    report = fit.to_json()
    assert report["inference"]["stages"] == ["chat", "serve", "eval"]
    assert report["merge"]["total_bytes"] == fit.merge.total and report["merge"]["fits"] is True
    optimize = report["optimize"]
    assert optimize["total_bytes"] == max(
        optimize["build"]["total_bytes"], optimize["verify"]["total_bytes"]
    )
    # only config.json here: the checkpoint is counted from the parameters (fp32: no dtype)
    assert optimize["checkpoint_bytes"] == fit.shape.params * 4
    assert set(optimize["build"]["components_bytes"]) >= {"runtime", "checkpoint (mapped)"}


def test_merge_and_optimize_that_do_not_fit_say_what_would(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder)), "cpu", GIB // 2)
    checks = {check.id: check for check in fit_checks(fit)}
    merge, optimize = checks["fit.merge"], checks["fit.optimize"]
    assert merge.status == optimize.status == "error"
    assert "slmforge optimize --adapter NAME=ADAPTER" in merge.fix
    assert optimize.summary.startswith("int4 ONNX build (build ~")
    assert optimize.fix.endswith("or more free memory")


def test_full_fine_tuning_has_no_merge(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder), method="full"), "cpu", 64 * GIB)
    assert fit.merge is None and fit.to_json()["merge"] is None
    assert "fit.merge" not in [c.id for c in fit_checks(fit)]


def test_qlora_without_cuda_is_a_problem(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder), method="qlora"), "cpu", 64 * GIB)
    finetune = fit_checks(fit)[0]
    assert finetune.status == "error"
    assert finetune.summary == ("--method qlora needs a CUDA GPU; this check is for 'cpu'")


def test_inference_estimate_of_an_int4_model(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder), max_seq_len=4096), "cpu", 16 * GIB)
    parts = fit.inference.components
    # fp32 KV cache: 2 (k, v) x 32 layers x 32 heads x 96 dims x 4096 tokens x 4 bytes
    assert parts["kv_cache"] == 2 * 32 * 32 * 96 * 4096 * 4
    # ONNX Runtime repacks int4 for int8 compute (0.75 bytes per weight: bits, scale, block
    # sum) and keeps the mapped scales (0.125); the untied fp32 embedding is gathered from
    # mapped pages, so only looked-up rows are resident (measured: 3,138 MiB of weights)
    shape = fit.shape
    assert parts["weights"] == int((shape.layer_linear_params + shape.head_params) * 0.875)
    assert 3.0 * GIB < parts["weights"] < 3.1 * GIB


def test_tied_int4_inference_does_not_count_an_fp32_embedding() -> None:
    qwen = shape_from_config(QWEN25_05B, None)
    weights = inference_estimate(qwen, "int4", "cpu", 256).components["weights"]
    # the head (the embedding) is an int4 MatMulNBits like the layers, and the embedding's
    # GatherBlockQuantized reads a reshaped copy of its int4 bits: nothing in fp32
    matmul = qwen.layer_linear_params + qwen.embedding_params
    assert weights == int(matmul * 0.875) + int(qwen.embedding_params * 0.5)
    assert weights < qwen.embedding_params * 4  # less than an fp32 table alone
    # measured here: 511 MiB for the session of the Qwen2.5-0.5B shape
    assert abs(weights + 30 * 2**20 - 511 * 2**20) < 0.05 * 511 * 2**20


def test_inference_activations_grow_with_the_prompt() -> None:
    qwen = shape_from_config(QWEN25_05B, None)
    short = inference_estimate(qwen, "int4", "cpu", 64).components
    long = inference_estimate(qwen, "int4", "cpu", 256).components
    # the prompt's logits (output and numpy copy) dominate with a 152k vocabulary
    assert long["activations"] - short["activations"] > 2 * 192 * qwen.vocab * 4
    assert long["kv_cache"] == 4 * short["kv_cache"]


# -- the report and the CLI --------------------------------------------------------------------
def _documented_checks() -> dict[str, str]:
    """Check id -> its row in docs/setup.md's JSON reference table."""
    text = (REPO / "docs" / "setup.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([A-Za-z_.]+)` \|.*$", text, re.M)}


def test_json_report_is_stable_and_documented(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "home"))
    code, out, _ = _run(["doctor", "--json"], capsys)
    report = json.loads(out)
    assert code == (1 if report["status"] == "error" else 0)
    assert set(report) == {"schema_version", "slmforge_version", "status", "checks", "fit"}
    assert report["schema_version"] == SCHEMA_VERSION and report["fit"] is None
    documented = _documented_checks()
    for item in report["checks"]:
        assert set(item) == {"id", "status", "summary", "fix", "details"}
        assert item["status"] in ("ok", "warning", "error")
        assert (item["fix"] is None) == (item["status"] == "ok"), item
        row_id = "extra.NAME" if item["id"].startswith("extra.") else item["id"]
        assert row_id in documented, f"{row_id} is not in docs/setup.md"
        for key in item["details"]:
            assert f"`{key}`" in documented[row_id], f"{row_id}.{key} is not in docs/setup.md"
    ids = [item["id"] for item in report["checks"]]
    for expected in ("python", "os", "cpu", "memory", "gpu", "torch", "onnxruntime"):
        assert expected in ids


def test_fit_options_without_a_model_are_bad_input(capsys) -> None:
    code, _, err = _run(["doctor", "--method", "qlora", "--batch-size", "2"], capsys)
    assert code == 2
    assert err == "error: --method, --batch-size: fit check options need --model MODEL_OR_FOLDER\n"


def test_fit_of_a_missing_folder_is_bad_input(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    code, _, err = _run(["doctor", "--model", str(missing)], capsys)
    assert code == 2
    assert err == f"error: {missing}: no such model folder (and not a hub id like 'org/name')\n"


def test_fit_option_values_are_validated(phi3_folder: Path, capsys) -> None:
    code, _, err = _run(["doctor", "--model", str(phi3_folder), "--batch-size", "0"], capsys)
    assert code == 2
    assert err == "error: --batch-size: Input should be greater than 0\n"


def test_diagnose_on_given_facts_adds_the_fit_checks(phi3_folder: Path) -> None:
    facts = Facts(**CPU_ONLY, torch=CPU_TORCH)
    report = diagnose(FitConfig(model=str(phi3_folder), method="qlora"), facts=facts)
    assert [c.id for c in report.checks][-4:] == [
        "fit.finetune",
        "fit.merge",
        "fit.optimize",
        "fit.inference",
    ]
    assert report.status == "error"  # qlora on a CPU-only machine
    assert report.to_json()["fit"]["device"] == "cpu"
    assert report.to_json()["fit"]["available_bytes"] == 24 * GIB


def test_a_crashing_check_is_reported_not_raised() -> None:
    from slmforge.doctor.run import _run

    def broken(facts: Facts) -> None:
        raise OSError("no /proc here")

    (check,) = _run("cpu", broken, Facts())
    assert (check.id, check.status) == ("cpu", "error")
    assert check.summary == "the cpu check failed: OSError: no /proc here"


def test_planning_for_a_device_this_machine_lacks(phi3_folder: Path) -> None:
    fit = check_fit(FitConfig(model=str(phi3_folder), method="qlora"), "cuda", None)
    assert fit.problems == [] and fit.finetune_fits is None
    checks = fit_checks(fit)
    finetune = checks[0]
    assert {c.status for c in checks} == {"warning"}
    assert finetune.summary.endswith("; there is no cuda device here to compare with")
