"""`slmforge models init --like NAME`: a random model of a real family member's exact shape.

The folder is a normal Hugging Face model (config.json, sharded safetensors with an index,
generation_config.json, tokenizer files with the family's chat template) plus `slmforge.json`.
The tokenizer is a small BPE slmforge trains offline with the family's special tokens; the
embedding keeps the public vocabulary size, so rows past the tokenizer exist as they do in real
checkpoints (Qwen2.5 has 151,936 rows for 151,665 tokens). Weights are random: good for memory,
speed and pipeline dry runs, never for quality figures.

Memory stays bounded by one shard: the model is laid out on the meta device (no storage), and
each shard's tensors are drawn, written and freed before the next, so a 7B shape is written on a
machine that could not hold it twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import artifact, check_output
from slmforge.config.shapes import RealShape, get_shape
from slmforge.models.chat import format_for_arch

SHARD_BYTES = 2 * 1024**3  # like `save_pretrained(max_shard_size=...)`: a few shards per model
TOKENIZER_VOCAB = 4096
TOKENIZER_CORPUS_CHARS = 400_000
DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    nbytes: int


def hf_config(shape: RealShape, tokenizer: Any, layers: int | None, dtype: str) -> Any:
    """The family's config class with the public fields, our token ids and the chosen depth."""
    from transformers import AutoConfig

    fields = dict(shape.config)
    if layers is not None:
        fields["num_hidden_layers"] = layers
        if "max_window_layers" in fields:
            fields["max_window_layers"] = min(fields["max_window_layers"], layers)
    config = AutoConfig.for_model(
        shape.model_type,
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    config.dtype = DTYPES[dtype]
    return config


def tensor_specs(config: Any, dtype: str) -> list[TensorSpec]:
    """Every tensor a checkpoint of `config` stores, from a storage-free (meta) model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, DTYPES[dtype])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    skip = {"lm_head.weight"} if config.tie_word_embeddings else set()
    return [
        TensorSpec(name, tuple(t.shape), t.numel() * t.element_size())
        for name, t in model.state_dict().items()
        if name not in skip
    ]


def plan_shards(specs: list[TensorSpec], limit: int = SHARD_BYTES) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def random_tensor(spec: TensorSpec, std: float, dtype: Any, generator: Any) -> Any:
    """What `PreTrainedModel._init_weights` draws: norms at one, biases at zero, N(0, std)."""
    import torch

    if spec.name.endswith(".bias"):
        return torch.zeros(spec.shape, dtype=dtype)
    if spec.name.endswith("norm.weight"):
        return torch.ones(spec.shape, dtype=dtype)
    return torch.empty(spec.shape, dtype=dtype).normal_(0.0, std, generator=generator)


def write_weights(folder: Path, config: Any, dtype: str, seed: int) -> int:
    """Sharded safetensors (with an index when more than one); returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, DTYPES[dtype])
    specs = tensor_specs(config, dtype)
    shards = plan_shards(specs)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02))
    weight_map: dict[str, str] = {}
    with progress.task("Writing random weights", total=len(specs)) as task:
        for name, shard in zip(names, shards, strict=True):
            tensors = {}
            for spec in shard:
                tensors[spec.name] = random_tensor(spec, std, torch_dtype, generator)
                weight_map[spec.name] = name
                task.advance()
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
            del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": weight_map,
        }
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )
    return sum(_numel(s.shape) for s in specs)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def init_like(
    like: str,
    out: str | Path,
    layers: int | None = None,
    dtype: str = "bf16",
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a random model shaped like `like` (at `layers` depth if given) to `out`."""
    from slmforge.errors import InputError
    from slmforge.models.corpus import build_corpus
    from slmforge.models.tiny import generation_config, save_tokenizer, train_tokenizer

    shape = get_shape(like)
    if dtype not in DTYPES:
        raise InputError(f"--dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if layers is not None and not 1 <= layers <= shape.layers:
        raise InputError(f"--layers: {like} has {shape.layers} layers; got {layers}")
    check_output(out, force)
    fmt = format_for_arch(shape.model_type)
    progress.info(f"Training a {TOKENIZER_VOCAB}-token tokenizer with {like}'s chat format")
    tokenizer = train_tokenizer(build_corpus(fmt, TOKENIZER_CORPUS_CHARS), fmt, TOKENIZER_VOCAB)
    config = hf_config(shape, tokenizer, layers, dtype)
    with artifact(out, "model", force) as art:
        parameters = write_weights(art.path, config, dtype, seed)
        config.save_pretrained(art.path)
        generation_config(tokenizer, fmt).save_pretrained(art.path)
        save_tokenizer(tokenizer, art.path)
        art.manifest.chat_template = fmt.template
        art.manifest.stop = [*fmt.stop, fmt.eos] if fmt.eos not in fmt.stop else list(fmt.stop)
        art.manifest.config = {
            "like": like,
            "hub_id": shape.hub_id,
            "layers": config.num_hidden_layers,
            "dtype": dtype,
            "seed": seed,
            "chat_format": fmt.name,
            "weights": "random",
        }
        art.manifest.metrics = {"parameters": parameters}
    progress.info(f"Wrote {out}: {parameters:,} parameters ({like}, random weights)")
    return Path(out)
