"""Merge a LoRA/DoRA adapter into its base model and write a normal model folder."""

from __future__ import annotations

from pathlib import Path

from slmforge import progress
from slmforge.artifacts import artifact, read_manifest, source_of
from slmforge.errors import InputError


def base_of(adapter: Path) -> str:
    """The base model an adapter was trained on, from its manifest or adapter_config.json."""
    manifest = read_manifest(adapter)
    if manifest and "base_model" in manifest.source:
        return manifest.source["base_model"].path
    config = adapter / "adapter_config.json"
    if config.is_file():
        import json

        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return str(base)
    raise InputError(f"{adapter}: no base model recorded; pass --base")


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    base: str | None = None,
    dtype: str = "auto",
    force: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Path:
    import torch
    from peft import PeftModel

    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_causal_lm, load_tokenizer

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    base = base or base_of(adapter)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = load_tokenizer(str(tokenizer_source), trust_remote_code=trust_remote_code)
    model = load_causal_lm(
        base, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with artifact(out, "model", force=force) as art:
        merged.save_pretrained(art.path, safe_serialization=True)
        tokenizer.save_pretrained(art.path)
        art.manifest.source = {
            "base_model": source_of(base, "model"),
            "adapter": source_of(adapter, "adapter"),
        }
        art.manifest.config = {"dtype": dtype}
        art.manifest.chat_template = getattr(tokenizer, "chat_template", None)
        art.manifest.stop = stop_strings(tokenizer)
        art.manifest.details = {"merged_from": "adapter"}
    progress.info(f"merged {adapter} into {base}: {out}")
    return Path(out)
