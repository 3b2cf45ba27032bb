"""The numbers of a decoder-only model that memory depends on, read from config.json alone.

Both the fit check of `slmforge doctor` and the check `slmforge finetune` runs before loading
any weights start from a `ModelShape`, so they cannot disagree about a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmforge.errors import MissingDependencyError, ModelError

# config.json's `dtype` (transformers >= 4.56) or `torch_dtype` -> our precision names
_CONFIG_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model that memory depends on."""

    model_type: str
    params: int
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    context: int | None
    dtype: str | None = None  # the checkpoint's weight dtype (bf16, fp16, fp32), if recorded

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def layer_linear_params(self) -> int:
        """Parameters of every linear layer inside the decoder blocks (not the LM head)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + q * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden


def _need(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelError(f"the model's config.json has no {keys[0]}; is it a decoder-only LM?")


def _bias_params(config: dict[str, Any], shape: ModelShape) -> int:
    """Bias parameters of one layer: Qwen2 has q/k/v biases; `attention_bias` and
    `mlp_bias` add them to every projection."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    biases = q + 2 * kv if shape.model_type == "qwen2" else 0
    if config.get("attention_bias"):
        biases = q + 2 * kv + shape.hidden
    if config.get("mlp_bias"):
        biases += 2 * shape.intermediate + shape.hidden
    return biases


def checkpoint_dtype(config: dict[str, Any]) -> str | None:
    """The weight dtype config.json records (`dtype`, or the older `torch_dtype`)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return _CONFIG_DTYPES.get(str(value).removeprefix("torch.")) if value else None


def shape_from_config(config: dict[str, Any], parameters: int | None) -> ModelShape:
    """A `ModelShape` from config.json values; parameters counted from the config if unknown."""
    hidden = _need(config, "hidden_size", "n_embd", "d_model")
    heads = _need(config, "num_attention_heads", "n_head")
    shape = ModelShape(
        model_type=str(config.get("model_type", "")),
        params=0,
        vocab=_need(config, "vocab_size"),
        hidden=hidden,
        layers=_need(config, "num_hidden_layers", "n_layer"),
        heads=heads,
        kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        tied=bool(config.get("tie_word_embeddings", False)),
        context=config.get("max_position_embeddings"),
        dtype=checkpoint_dtype(config),
    )
    counted = (
        shape.embedding_params
        + shape.head_params
        + shape.layer_linear_params
        + (2 * shape.layers + 1) * hidden  # RMSNorm weights
        + shape.layers * _bias_params(config, shape)
    )
    return ModelShape(**{**shape.__dict__, "params": parameters or counted})


def read_shape(model: str, trust_remote_code: bool = False) -> ModelShape:
    from slmforge.models.load import read_model_config

    try:
        config, parameters = read_model_config(model, trust_remote_code)
    except ImportError:
        raise MissingDependencyError(
            "transformers", "train", "reading a hub model's config"
        ) from None
    return shape_from_config(config, parameters)
