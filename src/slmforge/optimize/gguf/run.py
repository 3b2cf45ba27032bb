"""`export_gguf`: check -> write model -> write adapters -> Modelfiles -> verify -> keep.

Everything that can be wrong with the input (model folder, family, tokenizer, precision's
dependencies, adapters and their base, the output path) is checked before the first tensor is
written. The files are written inside an artifact temp folder, so a failed verification (or
anything else) leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import artifact, check_output, source_of
from slmforge.config.gguf import GGUF_PRECISIONS, GgufConfig
from slmforge.errors import MissingDependencyError
from slmforge.optimize.gguf import check as parity_check
from slmforge.optimize.gguf.families import Family, family_of, ignored_sliding_window
from slmforge.optimize.gguf.lora import Adapter, check_adapter, read_adapter, write_adapter
from slmforge.optimize.gguf.modelfile import write_modelfiles
from slmforge.optimize.gguf.readback import GgufTensors
from slmforge.optimize.gguf.tokenizer import Vocabulary, read_vocabulary
from slmforge.optimize.gguf.writer import llama_cpp_module, read_config, write_model
from slmforge.optimize.verify import Parity, verification_prompts


@dataclass
class Inputs:
    """Everything checked before the first tensor is written."""

    source: Path
    config: dict[str, Any]
    family: Family
    adapters: list[Adapter]
    tokenizer: Any
    stops: list[str]
    vocab: Vocabulary
    prompts: list[list[dict[str, str]]]
    ignored_window: int | None


def export_gguf(cfg: GgufConfig) -> Path:
    """Write, verify and keep the GGUF folder; returns its path."""
    inputs = check_inputs(cfg)
    with artifact(cfg.out, "gguf_model", force=cfg.force) as art:
        started = time.monotonic()
        model_file = f"model-{cfg.precision}.gguf"
        merged = inputs.adapters[0] if cfg.merge_adapter else None
        types = _write_model(
            inputs.source, art.path / model_file, cfg.precision, inputs.vocab, merged
        )
        files = {} if merged else _write_adapters(art.path, inputs.adapters, inputs.config)
        modelfiles = write_modelfiles(
            art.path,
            model_file,
            files,
            inputs.tokenizer,
            inputs.vocab.add_bos,
            inputs.stops,
            inputs.source.name,
        )
        # the tokenizer beside the weights: slmforge's llama.cpp engine renders chats with it
        inputs.tokenizer.save_pretrained(art.path)
        write_s = time.monotonic() - started
        parity = _verify(cfg, inputs, art.path, model_file, files)
        art.manifest.source = {"model": source_of(inputs.source, "model")} | {
            f"adapter:{a.name}": source_of(a.path, "adapter") for a in inputs.adapters
        }
        art.manifest.config = cfg.model_dump(mode="json")
        art.manifest.metrics = _metrics(inputs.source, art.path, write_s, parity)
        art.manifest.chat_template = inputs.vocab.chat_template
        art.manifest.stop = inputs.stops
        art.manifest.details = _details(cfg, inputs, model_file, types, files, modelfiles)
    progress.info(f"wrote {cfg.out}")
    return Path(cfg.out)


def check_inputs(cfg: GgufConfig) -> Inputs:
    """Fail fast: model folder and family, precision's dependencies, output path, adapters and
    their base, tokenizer, verification prompts."""
    _require_gguf()
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_tokenizer
    from slmforge.optimize.onnx_build import resolve_model

    source = resolve_model(cfg.model)
    config = read_config(source)
    family = family_of(config)
    window = ignored_sliding_window(family, config)
    if window is not None:
        progress.warn(
            f"{source.name} was trained with a {window}-token sliding attention window, which "
            f"llama.cpp's {family.arch} does not apply: outputs differ past {window} tokens"
        )
    if GGUF_PRECISIONS[cfg.precision].needs_llama_cpp:
        llama_cpp_module()
    check_output(cfg.out, cfg.force)
    adapters = [read_adapter(name, path) for name, path in cfg.adapters().items()]
    for adapter in adapters:
        check_adapter(adapter, source, config)
    tokenizer = load_tokenizer(source)
    stops = stop_strings(tokenizer)
    vocab = read_vocabulary(source, int(config["vocab_size"]), stops)
    if vocab.mismatches:
        progress.warn(_mismatch_warning(source, vocab))
    prompts = verification_prompts(cfg.verify_data, cfg.verify_prompts)
    return Inputs(source, config, family, adapters, tokenizer, stops, vocab, prompts, window)


def _details(
    cfg: GgufConfig,
    inputs: Inputs,
    model_file: str,
    types: dict[str, int],
    files: dict[str, str],
    modelfiles: list[str],
) -> dict[str, Any]:
    merged = inputs.adapters[0].name if cfg.merge_adapter else None
    return {
        "format": "gguf",
        "precision": cfg.precision,
        "architecture": inputs.family.arch,
        "model_file": model_file,
        "tensor_types": types,
        "merged_adapter": merged,
        "adapters": {a.name: _adapter_details(a, files) for a in inputs.adapters if not merged},
        "modelfiles": modelfiles,
        "ignored_sliding_window": inputs.ignored_window,
        "add_bos": inputs.vocab.add_bos,
        "bos_token_id": inputs.vocab.bos_id,
        "eos_token_id": inputs.vocab.eos_id,
        "eot_token_id": inputs.vocab.eot_id,
        "tokenizer_model": inputs.vocab.model,
        "add_space_prefix": inputs.vocab.add_space_prefix,
        "llama_cpp_tokenizer_mismatches": list(inputs.vocab.mismatches),
        "writer": f"gguf {_gguf_version()}",
    }


def _mismatch_warning(source: Path, vocab: Vocabulary) -> str:
    where = "before the text and after every special token" if vocab.add_space_prefix else "nowhere"
    return (
        f"{source.name}: llama.cpp will tokenize {len(vocab.mismatches)} of the texts checked "
        f"differently from the Hugging Face tokenizer, e.g. {vocab.mismatches[0]!r}; its "
        "SentencePiece tokenizer puts the leading '▁' either before the text and after every "
        f"special token or nowhere (here: {where}, which fits the chat prompts best), and strips "
        "whitespace after special tokens only for Phi-3 names. Prompts sent to llama.cpp or "
        "Ollama may get other token ids than in training"
    )


def write_model_file(source: Path, out: Path, precision: str) -> Path:
    """Only the model file, unverified, no adapters or Modelfile: for benchmarks that judge
    the file with llama.cpp itself. `precision` may also be "f32"."""
    _require_gguf()
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_tokenizer

    config = read_config(source)
    family_of(config)
    if precision == "q4_k_m":
        llama_cpp_module()
    stops = stop_strings(load_tokenizer(source))
    vocab = read_vocabulary(source, int(config["vocab_size"]), stops)
    write_model(source, out, precision, vocab)
    return out


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingDependencyError("gguf", "gguf", "GGUF export") from None


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def _write_model(
    source: Path, out: Path, precision: str, vocab: Vocabulary, merged: Adapter | None
) -> dict[str, int]:
    from slmforge.optimize.gguf.writer import plan_tensors

    count = len(plan_tensors(source, read_config(source), precision))
    with progress.task(f"Writing {out.name}", total=count) as task:
        delta = merged.delta if merged is not None else None
        return write_model(source, out, precision, vocab, delta, on_tensor=task.advance)


def _write_adapters(
    folder: Path, adapters: list[Adapter], config: dict[str, Any]
) -> dict[str, str]:
    files = {}
    for adapter in adapters:
        files[adapter.name] = f"{adapter.name}.gguf"
        write_adapter(adapter, config, folder / files[adapter.name])
    if adapters:
        progress.info(f"wrote {len(adapters)} LoRA adapter file(s): {', '.join(files.values())}")
    return files


def _adapter_details(adapter: Adapter, files: dict[str, str]) -> dict[str, Any]:
    return {
        "file": files.get(adapter.name),
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "target_modules": list(adapter.target_modules),
    }


def _verify(
    cfg: GgufConfig, inputs: Inputs, folder: Path, model_file: str, files: dict[str, str]
) -> dict[str, Parity]:
    if not cfg.verify:
        return {}
    pairs = {
        a.name: (a.path, folder / files[a.name] if a.name in files else None)
        for a in inputs.adapters
    }
    merged = inputs.adapters[0].name if cfg.merge_adapter else None
    results = parity_check.verify_export(
        inputs.source,
        folder / model_file,
        inputs.config,
        pairs,
        merged,
        inputs.prompts,
        cfg.verify_tokens,
    )
    for label, parity in results.items():
        progress.info(
            f"parity {label}: mean KL {parity.kl:.3g}, confident agreement "
            f"{parity.confident_agreement:.1%} of {parity.confident_positions}, agreement "
            f"{parity.agreement:.1%}, max logit diff {parity.max_logit_diff:.3g}"
        )
    for label, parity in results.items():
        parity_check.check(parity, cfg.kl_threshold(), cfg.agreement_threshold(), label)
    return results


def _metrics(
    source: Path, folder: Path, write_s: float, parity: dict[str, Parity]
) -> dict[str, Any]:
    before = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    after = sum(p.stat().st_size for p in folder.glob("model-*.gguf"))
    return {
        "size_before_bytes": before,
        "size_after_bytes": after,
        "size_ratio": round(after / before, 4) if before else None,
        "build_s": round(write_s, 2),
        "parity": {label: p.as_dict() for label, p in parity.items()},
    }


def tensor_types(path: Path) -> dict[str, str]:
    """The GGML type of every tensor in a GGUF file (for reports and tests)."""
    return GgufTensors(path).types()
