"""Load tokenizers and causal LMs from a hub id or a local folder, the same way for both.

Local folders load with `local_files_only=True` (no network lookups for a path). Weights load
from safetensors only: pickle checkpoints (`*.bin`, `*.pt`) can run code when loaded, so they
are refused unless the caller passes `allow_pickle=True`. `model_info` reads config.json and the
safetensors headers, so it describes a model without loading its weights.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from slmforge.artifacts import read_manifest
from slmforge.errors import InputError, ModelError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_SAFETENSORS_TO_TORCH = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def looks_like_path(spec: str | Path) -> bool:
    """Whether `spec` names a local path rather than a hub id (`org/name`)."""
    text = str(spec)
    return (
        isinstance(spec, Path)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or "\\" in text
        or Path(text).expanduser().exists()
    )


def _local_folder(spec: str | Path) -> Path | None:
    """The folder `spec` names, None for a hub id; a path-like spec that is missing is an error."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if looks_like_path(spec):
        raise ModelError(f"{spec}: no such model folder (and not a hub id like 'org/name')")
    return None


def adapter_base(adapter: Path) -> str:
    """The base model an adapter folder was trained on, from its manifest or
    adapter_config.json (here, below `runtime`, so the engine resolver can read it)."""
    manifest = read_manifest(adapter)
    if manifest and "base_model" in manifest.source:
        return manifest.source["base_model"].path
    config = adapter / "adapter_config.json"
    if config.is_file():
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return str(base)
    raise InputError(f"{adapter}: no base model recorded; pass --base")


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _pickle_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in _PICKLE_WEIGHTS for p in folder.glob(pattern))


def missing_parts(folder: Path) -> list[str]:
    """What a folder lacks to be a loadable model: config, weights, tokenizer."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not _safetensors_files(folder) and not _pickle_files(folder):
        missing.append("weights (*.safetensors)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or tokenizer_config.json)")
    return missing


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and not missing_parts(path)


def _check_model_folder(folder: Path, allow_pickle: bool) -> None:
    missing = missing_parts(folder)
    if missing:
        raise ModelError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    if not _safetensors_files(folder) and not allow_pickle:
        names = ", ".join(p.name for p in _pickle_files(folder))
        raise ModelError(
            f"{folder} has only pickle weights ({names}), which can run code when loaded; "
            "convert them to safetensors or pass --allow-pickle if you trust the source"
        )


def load_tokenizer(spec: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder or hub id."""
    from transformers import AutoTokenizer

    folder = _local_folder(spec)
    if folder is not None and not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        raise ModelError(f"{folder} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(
            str(folder or spec),
            local_files_only=folder is not None,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {spec}: {_first_line(exc)}") from None


def quiet_transformers() -> None:
    """Turn off transformers' own tqdm bars: slmforge reports progress through one channel."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_causal_lm(
    spec: str | Path,
    dtype: str = "auto",
    device: str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """A causal LM in eval mode on `device`, from safetensors unless `allow_pickle`."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    folder = _local_folder(spec)
    if folder is not None:
        _check_model_folder(folder, allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder or spec),
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            local_files_only=folder is not None,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model {spec}: {_first_line(exc)}") from None
    return model.to(device).eval()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor names, dtypes and shapes, no data."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size))


def _weights_summary(folder: Path) -> tuple[int | None, str | None]:
    files = _safetensors_files(folder)
    if not files:
        return None, None
    count, by_dtype = 0, {}
    for path in files:
        for name, entry in _safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = math.prod(entry["shape"])
            count += n
            by_dtype[entry["dtype"]] = by_dtype.get(entry["dtype"], 0) + n
    main = max(by_dtype, key=by_dtype.get) if by_dtype else None
    return count, _SAFETENSORS_TO_TORCH.get(main, main and main.lower())


def _read_config(spec: str | Path, folder: Path | None, trust_remote_code: bool) -> dict[str, Any]:
    if folder is not None:
        path = folder / "config.json"
        if not path.is_file():
            raise ModelError(f"{folder} is not a model folder: missing config.json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(spec), trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of {spec}: {_first_line(exc)}") from None


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs nest the language model's settings.
    return config.get("text_config") or config


def read_model_config(
    spec: str | Path, trust_remote_code: bool = False
) -> tuple[dict[str, Any], int | None]:
    """A model's config (a multimodal model's text settings over its top level) and its
    parameter count from the safetensors headers (None for a hub id); no weights loaded."""
    folder = _local_folder(spec)
    config = _read_config(spec, folder, trust_remote_code)
    parameters = _weights_summary(folder)[0] if folder else None
    return {**config, **_text_config(config)}, parameters


def model_info(spec: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """What a model is, from its config, safetensors headers and tokenizer; no weights loaded."""
    from slmforge.models.chat import detect_format, stop_strings

    folder = _local_folder(spec)
    config = _read_config(spec, folder, trust_remote_code)
    text = _text_config(config)
    parameters, weights_dtype = _weights_summary(folder) if folder else (None, None)
    info: dict[str, Any] = {
        "model": str(spec),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "parameters": parameters,
        "dtype": weights_dtype or config.get("dtype") or config.get("torch_dtype"),
        "context_length": text.get("max_position_embeddings"),
        "vocab_size": text.get("vocab_size"),
        "layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "attention_heads": text.get("num_attention_heads"),
        "kv_heads": text.get("num_key_value_heads"),
    }
    try:
        tokenizer = load_tokenizer(spec, trust_remote_code)
    except ModelError:
        tokenizer = None
    template = getattr(tokenizer, "chat_template", None)
    fmt = detect_format(template if isinstance(template, str) else None)
    info["chat_template"] = bool(template)
    info["chat_format"] = fmt.name if fmt else None
    info["stop"] = stop_strings(tokenizer) if tokenizer is not None else []
    return info
