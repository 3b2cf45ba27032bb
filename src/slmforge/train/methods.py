"""Fine-tuning methods: how to load and prepare the model, and what to save.

One training loop serves them all (train/sft.py); a method only differs in these hooks. The
names and traits are the registry in `config/methods.py`; a new method is an entry there plus
its hooks class in `HOOKS` below (a unit test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.config.finetune import FinetuneConfig
from slmforge.config.methods import FINETUNE_METHODS
from slmforge.errors import ConfigError, InputError, MissingDependencyError

# Attention projections per model_type: the common LoRA default, shared by ONNX adapters.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "gpt2": ["c_attn", "c_proj"],
}


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the model's linear layers (what `--target-modules` may name)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Linear4bit"
    }
    return sorted(names - {"lm_head"})


def resolve_targets(model: Any, requested: list[str]) -> list[str] | str:
    """The target modules to adapt, checked against the model's real layers."""
    if requested == ["all-linear"]:
        return "all-linear"
    available = linear_module_names(model)
    model_type = getattr(model.config, "model_type", "")
    targets = requested or DEFAULT_TARGETS.get(model_type, [])
    if not targets:
        raise ConfigError(
            f"no default target modules for model type '{model_type}'; pass --target-modules "
            f"(linear layers of this model: {', '.join(available)}) or 'all-linear'"
        )
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ConfigError(
            f"--target-modules: {', '.join(unknown)} not in this model; its linear layers are: "
            f"{', '.join(available)}"
        )
    return targets


@dataclass
class MethodBase:
    """LoRA's hooks, which the other methods adjust. Whether a method saves an adapter or the
    whole model is its registry trait (`FinetuneMethod.adapter`)."""

    name: str

    @property
    def saves_adapter(self) -> bool:
        return FINETUNE_METHODS[self.name].adapter

    def check(self, cfg: FinetuneConfig, device: str) -> None:
        """Fail fast on impossible combinations, before anything is loaded."""
        if FINETUNE_METHODS[self.name].cuda_only and device != "cuda":
            raise InputError(
                f"--method {self.name} needs a CUDA GPU; this run would use '{device}'. "
                "Use --method lora on this machine."
            )

    def load_kwargs(self, cfg: FinetuneConfig, dtype: Any) -> dict[str, Any]:
        return {"dtype": str(dtype).removeprefix("torch.")}

    def prepare(self, model: Any, cfg: FinetuneConfig) -> Any:
        return _wrap_lora(model, cfg, use_dora=False)

    def save(self, model: Any, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)


def _wrap_lora(model: Any, cfg: FinetuneConfig, use_dora: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=resolve_targets(model, cfg.target_modules),
        use_dora=use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@dataclass
class Dora(MethodBase):
    def prepare(self, model: Any, cfg: FinetuneConfig) -> Any:
        return _wrap_lora(model, cfg, use_dora=True)


@dataclass
class QLora(MethodBase):
    def check(self, cfg: FinetuneConfig, device: str) -> None:
        super().check(cfg, device)
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MissingDependencyError("bitsandbytes", "train", "--method qlora") from None

    def load_kwargs(self, cfg: FinetuneConfig, dtype: Any) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        return {"dtype": str(dtype).removeprefix("torch."), "quantization_config": quant}

    def prepare(self, model: Any, cfg: FinetuneConfig) -> Any:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing
        )
        return _wrap_lora(model, cfg, use_dora=False)


@dataclass
class Full(MethodBase):
    def prepare(self, model: Any, cfg: FinetuneConfig) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        return model


HOOKS: dict[str, type[MethodBase]] = {
    "lora": MethodBase,
    "dora": Dora,
    "qlora": QLora,
    "full": Full,
}


def get_method(name: str) -> MethodBase:
    if name not in FINETUNE_METHODS or name not in HOOKS:
        raise ConfigError(f"--method: '{name}' is not one of {', '.join(FINETUNE_METHODS)}")
    return HOOKS[name](name)
