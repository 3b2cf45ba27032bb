"""Run the ONNX Runtime GenAI model builder and finish its output folder.

The builder runs as a subprocess: it prints freely, can take minutes and gigabytes, and a crash
in it (or in a native library it loads) must become a clear `RunError` with its real last error
lines instead of taking the CLI down. It runs offline (`HF_HUB_OFFLINE=1`, `hf_token=false`) on
a local folder. Afterwards the folder gets the source model's own tokenizer files, its chat
template and stop tokens, and `search.max_length` set to the requested context, because the
builder sizes the KV cache by the model's full context by default.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.config.precisions import QUANT_ALGOS, get_precision
from slmforge.errors import InputError, ModelError, RunError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "phi3", "mistral")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
_ERROR_LINES = 6


def resolve_model(spec: str) -> Path:
    """A local folder for `spec`: the folder itself, or a hub model already in the HF cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"{spec}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as exc:  # the hub client raises several unrelated types for "not cached"
        raise ModelError(
            f"{spec} is not a local folder or a cached hub model (optimize never downloads; "
            f"download it first): {exc.__class__.__name__}"
        ) from None


def check_architecture(folder: Path) -> str:
    """The model_type of a model folder, if the builder path supports it."""
    from slmforge.models.load import missing_parts

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder} is not a model folder: missing config.json")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8"))["model_type"]
    except (ValueError, KeyError):
        raise ModelError(f"{config_path}: not a model config (no model_type)") from None
    if model_type not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise InputError(f"unsupported architecture {model_type}; supported: {supported}")
    missing = missing_parts(folder)
    if missing:
        raise ModelError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    return model_type


def check_device(precision: str, device: str) -> None:
    """Fail before any work when this machine cannot run the requested build."""
    import onnxruntime_genai as og

    if device == "dml" and sys.platform != "win32":
        raise InputError("--device dml needs Windows (DirectML); use --device cpu or cuda")
    if device == "dml" and not og.is_dml_available():
        raise InputError("--device dml needs onnxruntime-genai-directml installed")
    if device == "cuda" and not og.is_cuda_available():
        raise InputError(
            f"--device cuda --precision {precision}: this onnxruntime-genai has no CUDA support "
            "(install onnxruntime-genai-cuda), or use --device cpu"
        )


def builder_options(cfg: Any, extra: dict[str, str]) -> dict[str, str]:
    """`--extra_options` for the builder from the config (quantization, offline, adapters)."""
    options = {"hf_token": "false", "hf_remote": str(cfg.trust_remote_code).lower()}
    if get_precision(cfg.precision).quantized:
        options["block_size"] = str(cfg.int4_block_size)
        options["is_symmetric"] = str(cfg.int4_symmetric).lower()
        options["algo_config"] = QUANT_ALGOS[cfg.int4_algo].builder_algo
        if cfg.int4_accuracy_level is not None:
            options["accuracy_level"] = str(cfg.int4_accuracy_level)
    return options | extra


def run_builder(
    source: Path,
    out: Path,
    precision: str,
    device: str,
    options: dict[str, str],
    cache: Path,
    weights: Path | None = None,
) -> None:
    """Run the builder into `out`; any failure raises RunError with its last error lines.
    `weights`: packed int4/int8 weights to use instead of rounding (optimize/gptq.py)."""
    command = [
        sys.executable,
        "-m",
        "slmforge.optimize.builder_run",  # the builder, quantizing one MatMul at a time
        *(["--slmforge-weights", str(weights)] if weights is not None else []),
        "-i",
        str(source),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        device,
        "-c",
        str(cache),
        "--extra_options",
        *(f"{key}={value}" for key, value in options.items()),
    ]
    # A fixed mmap threshold: glibc's adaptive one moves past the builder's per-weight buffers
    # (tens of MB), which then stay in the heap after they are freed; measured on a 0.5B model
    # this held ~0.9 GB more by the last layer.
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),
    }
    with progress.task(f"Building {precision} ONNX model for {device}"):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    missing = [n for n in ("model.onnx", "genai_config.json") if not (out / n).is_file()]
    if proc.returncode != 0 or missing:
        what = f"exit code {proc.returncode}" if proc.returncode else f"no {', '.join(missing)}"
        raise RunError(f"the ONNX builder failed ({what}): {_last_error(proc.stdout, proc.stderr)}")


def _last_error(stdout: str, stderr: str) -> str:
    """The builder's last meaningful lines (progress bars and blank lines dropped)."""
    lines = [
        line.strip()
        for line in (stderr or stdout).replace("\r", "\n").splitlines()
        if line.strip() and "it/s]" not in line and "%|" not in line
    ]
    return " | ".join(lines[-_ERROR_LINES:]) or "no output"


def finish_folder(
    out: Path, source: Path, tokenizer: Any, stop_ids: list[int], max_length: int
) -> dict[str, Any]:
    """Tokenizer files and chat template from the source, eos/pad ids and context length."""
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if template:
        # transformers 5 reads chat_template.jinja first; older readers (and onnxruntime-genai's
        # own chat support) read tokenizer_config.json: keep the same template in both.
        config_path = out / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if (out / "chat_template.jinja").is_file():
            (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    genai_path = out / "genai_config.json"
    genai = json.loads(genai_path.read_text(encoding="utf-8"))
    model = genai["model"]
    context = int(model.get("context_length") or max_length)
    if max_length > context:
        raise InputError(f"--max-length {max_length} exceeds the model's context {context}")
    eos = model.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    model["eos_token_id"] = sorted(set(eos_ids) | set(stop_ids))
    if tokenizer.pad_token_id is not None:
        model["pad_token_id"] = tokenizer.pad_token_id
    genai["search"]["max_length"] = max_length
    genai_path.write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8")
    return genai


def onnx_bytes(folder: Path) -> int:
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.name.endswith((".onnx", ".onnx.data"))
    )


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def builder_version() -> str:
    from importlib.metadata import version

    return version("onnxruntime-genai")
