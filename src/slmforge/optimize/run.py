"""`slmforge optimize`: check -> calibrate -> build -> adapters -> verify -> keep.

Everything that can be wrong with the input (model folder, architecture, device, adapters and
their base, the output path, the verification data) is checked before the builder starts. The
build happens inside an artifact temp folder, so a failed build or a failed verification leaves
nothing behind. The calibrated methods (--int4-algo gptq|awq, optimize/calibrated.py) read and
check their calibration data before any work too, and run just before the builder.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import artifact, check_output, source_of
from slmforge.config.optimize import OptimizeConfig
from slmforge.config.precisions import QUANT_ALGOS, get_precision
from slmforge.optimize import adapters as lora
from slmforge.optimize import calibrated, calibration, memory, onnx_build, verify


def optimize(cfg: OptimizeConfig) -> Path:
    """Build, verify and write the ONNX model folder (or, with `--format gguf`, the GGUF
    folder: optimize/gguf); returns its path."""
    if cfg.compare:  # a quality ladder of builds (optimize/compare.py), each made below
        from slmforge.optimize.compare import compare

        return compare(cfg)
    if cfg.format == "gguf":
        from slmforge.optimize.gguf import export_gguf

        return export_gguf(cfg.gguf_config())
    source = onnx_build.resolve_model(cfg.model)
    model_type = onnx_build.check_architecture(source)
    onnx_build.check_device(cfg.precision, cfg.device)
    check_output(cfg.out, cfg.force)
    from slmforge.train.shape import read_shape

    shape = read_shape(str(source), cfg.trust_remote_code)
    memory.check_optimize_fits(estimate(cfg, source, shape))
    adapters = cfg.adapters()
    infos = lora.check_adapters(adapters, source)
    prompts = verify.verification_prompts(cfg.verify_data, cfg.verify_prompts)
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    stops = stop_strings(tokenizer)
    vocab = tokenizer.get_vocab()
    stop_ids = [vocab[s] for s in stops if s in vocab]
    calib = None
    if QUANT_ALGOS[cfg.int4_algo].calibrated and cfg.calibration_data is not None:
        context = shape.context or cfg.calibration_seq_len
        calib = calibration.calibration_windows(
            cfg.calibration_data,
            tokenizer,
            cfg.calibration_samples,
            cfg.calibration_seq_len,
            context,
        )

    with (
        artifact(cfg.out, "onnx_model", force=cfg.force) as art,
        tempfile.TemporaryDirectory(prefix="slmforge-calibrated-") as scratch,
    ):
        started = time.monotonic()
        quantization, built = _calibrate_and_build(
            cfg, source, art.path, infos, calib, Path(scratch)
        )
        genai = onnx_build.finish_folder(art.path, source, tokenizer, stop_ids, cfg.max_length)
        switchable = _write_adapters(art.path, built) if built and not cfg.merge_adapter else {}
        build_s = time.monotonic() - started
        parity = _verify(cfg, art.path, source, adapters, prompts) if cfg.verify else {}
        art.manifest.source = {"model": source_of(source, "model")} | {
            f"adapter:{info.name}": source_of(info.path, "adapter") for info in infos
        }
        art.manifest.config = cfg.model_dump(mode="json")
        art.manifest.metrics = _metrics(source, art.path, build_s, parity)
        art.manifest.chat_template = tokenizer.chat_template
        art.manifest.stop = stops
        art.manifest.details = {
            "precision": cfg.precision,
            "device": cfg.device,
            "architecture": model_type,
            "eos_token_id": genai["model"]["eos_token_id"],
            "max_length": cfg.max_length,
            "merged_adapter": infos[0].name if cfg.merge_adapter else None,
            "adapters": switchable,
            "builder": f"onnxruntime-genai {onnx_build.builder_version()}",
            "quantization": quantization,
        }
    progress.info(f"wrote {cfg.out}")
    return Path(cfg.out)


def estimate(cfg: OptimizeConfig, source: Path, shape: Any = None) -> memory.OptimizeEstimate:
    """The memory this build will need (optimize/memory.py), from config.json and file sizes."""
    from slmforge.train.shape import read_shape

    shape = shape or read_shape(str(source), cfg.trust_remote_code)
    checkpoint = memory.checkpoint_bytes(source)
    calibrate = None
    if QUANT_ALGOS[cfg.int4_algo].calibrated:
        calibrate = memory.calibration_estimate(
            shape, cfg.int4_algo, checkpoint, cfg.calibration_samples, cfg.calibration_seq_len
        )
    return memory.optimize_estimate(
        shape,
        cfg.precision,
        checkpoint,
        cfg.verify,
        cfg.verify_prompts,
        cfg.verify_tokens,
        calibrate,
    )


def _calibrate_and_build(
    cfg: OptimizeConfig,
    source: Path,
    out: Path,
    infos: list[lora.AdapterInfo],
    calib: calibration.Calibration | None,
    scratch: Path,
) -> tuple[dict[str, Any] | None, list[lora.AdapterInfo]]:
    """Build (after the calibrated method's step, if any). Returns the quantization the
    manifest records (None for a float build) and the adapters as built: AWQ rewrites them
    for its scaled base into `scratch`, which must outlive the writing of the adapters."""
    precision = get_precision(cfg.precision)
    if not precision.quantized:
        _build(cfg, source, out, infos)
        return None, infos
    recorded: dict[str, Any] = {
        "algo": cfg.int4_algo,
        "bits": precision.bits,
        "block_size": cfg.int4_block_size,
        "symmetric": cfg.int4_symmetric,
    }
    if calib is None:
        _build(cfg, source, out, infos)
        return recorded, infos
    settings = calibrated.Settings(
        precision.bits or 4, cfg.int4_block_size, cfg.int4_symmetric, cfg.trust_remote_code
    )
    prepared = calibrated.prepare(cfg.int4_algo, source, calib, settings, scratch, infos)
    _build(cfg, prepared.source, out, prepared.adapters, prepared.weights)
    return recorded | {"calibration": prepared.details}, prepared.adapters


def _build(
    cfg: OptimizeConfig,
    source: Path,
    out: Path,
    infos: list[lora.AdapterInfo],
    weights: Path | None = None,
) -> None:
    extra: dict[str, str] = {}
    if infos:
        extra["adapter_path"] = str(infos[0].path)
    if infos and not cfg.merge_adapter and get_precision(cfg.precision).quantized:
        # Switchable LoRA weights are swapped at runtime as float tensors: keep their MatMuls
        # out of quantization.
        layers = json.loads((source / "config.json").read_text(encoding="utf-8"))
        names = lora.lora_nodes_to_exclude(int(layers["num_hidden_layers"]))
        extra["nodes_to_exclude"] = ",".join(names)
    options = onnx_build.builder_options(cfg, extra)
    with tempfile.TemporaryDirectory(prefix="slmforge-onnx-cache-") as cache:
        onnx_build.run_builder(
            source, out, cfg.precision, cfg.device, options, Path(cache), weights
        )


def _write_adapters(folder: Path, infos: list[lora.AdapterInfo]) -> dict[str, Any]:
    """Make the build adapter switchable and write every adapter as `<name>.onnx_adapter`."""
    model_path = folder / "model.onnx"
    shapes = lora.lora_initializer_shapes(model_path)
    baked = lora.baked_tensors(model_path, list(shapes))
    first = lora.onnx_tensors(infos[0], shapes)
    lora.self_check(baked, first)
    lora.make_switchable(model_path)
    written = {}
    for info in infos:
        tensors = first if info is infos[0] else lora.onnx_tensors(info, shapes)
        lora.write_adapter(tensors, folder / f"{info.name}.onnx_adapter")
        written[info.name] = {
            "file": f"{info.name}.onnx_adapter",
            "rank": info.rank,
            "alpha": info.alpha,
            "target_modules": list(info.target_modules),
        }
    progress.info(f"wrote {len(infos)} switchable adapter(s): {', '.join(written)}")
    return written


def _verify(
    cfg: OptimizeConfig,
    folder: Path,
    source: Path,
    adapters: dict[str, Path],
    prompts: list[list[dict[str, str]]],
) -> dict[str, verify.Parity]:
    rounding = None
    bits = get_precision(cfg.precision).bits
    if bits is not None:
        rounding = verify.Rounding(bits, cfg.int4_block_size, tied=False)  # tied: read there
    results = verify.verify_build(
        folder, source, adapters, cfg.merge_adapter, prompts, cfg.verify_tokens, rounding
    )
    max_kl, min_agreement = cfg.kl_threshold(), cfg.agreement_threshold()
    for label, parity in results.items():
        progress.info(
            f"parity {label}: mean KL {parity.kl:.3g}, confident agreement "
            f"{parity.confident_agreement:.1%} of {parity.confident_positions}, agreement "
            f"{parity.agreement:.1%}, max logit diff {parity.max_logit_diff:.3g}, "
            f"greedy match {parity.greedy_match:.0%}"
        )
    for label, parity in results.items():
        verify.check(parity, cfg.precision, max_kl, min_agreement, label, cfg.max_kl is None)
    return results


def _metrics(
    source: Path, folder: Path, build_s: float, parity: dict[str, verify.Parity]
) -> dict[str, Any]:
    before = onnx_build.safetensors_bytes(source)
    after = onnx_build.onnx_bytes(folder)
    return {
        "size_before_bytes": before,
        "size_after_bytes": after,
        "size_ratio": round(after / before, 4) if before else None,
        "build_s": round(build_s, 2),
        "parity": {label: p.as_dict() for label, p in parity.items()},
    }
