"""`TorchEngine`: transformers + peft, several LoRA adapters on one base model.

Generation is a plain token loop with a KV cache rather than `model.generate` + a streamer
thread: the loop (shared with ONNX in `runtime/local.py`) knows exactly which token ended a
reply (finish reason, token counts), samples with a per-request generator (a seed reproduces a
reply regardless of other requests), and needs no second thread. Adapters are PEFT adapters
loaded once; each request picks one with `set_adapter`, or runs the base with adapters disabled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from slmforge.errors import ModelError
from slmforge.models.load import load_causal_lm, load_tokenizer
from slmforge.runtime.local import Forward, LocalEngine
from slmforge.runtime.prefix_cache import PrefixCache, concatenated


class TorchEngine(LocalEngine):
    name = "torch"

    def __init__(
        self,
        model: str | Path,
        adapters: dict[str, str | Path] | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        allow_pickle: bool = False,
    ) -> None:
        base = load_causal_lm(model, dtype=dtype, device=device, allow_pickle=allow_pickle)
        self._setup(
            _attach_adapters(base, adapters or {}).eval(),
            load_tokenizer(model),
            list(adapters or {}),
            str(model),
        )

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any) -> TorchEngine:
        """An engine around a model already in memory (e.g. right after training), used as it
        is: a PEFT model answers with its active adapter. The caller sets eval mode."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, [], str(getattr(tokenizer, "name_or_path", "") or "model"))
        return engine

    def _setup(self, model: Any, tokenizer: Any, adapters: list[str], path: str) -> None:
        self.source = self.model_path = path
        self.model = model
        self.device = str(next(model.parameters()).device)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self._init_local(tokenizer, adapters, eos)
        self.context_length = _context_length(model.config, tokenizer)

    def _adapter_context(self, adapter: str | None) -> Any:
        if not self._adapter_names:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()

    def enable_prefix_cache(self, max_bytes: int) -> bool:
        self.prefix_cache = PrefixCache(max_bytes)
        return True

    @contextmanager
    def session(self, adapter: str | None, max_length: int) -> Iterator[Forward]:
        """A forward function over a KV cache: the prompt's prefill (after the blocks the prefix
        cache has of it), then one token a step."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        prefill = self.prefix_cache is not None

        def forward(new_ids: list[int]) -> Any:
            nonlocal cache, prefill
            reused = _load_prefix(self.prefix_cache, cache, adapter, new_ids) if prefill else 0
            inputs = torch.tensor([new_ids[reused:]], device=self.device)
            out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            if prefill:
                _store_prefix(self.prefix_cache, cache, adapter, new_ids, reused)
                prefill = False
            return out.logits[0, -1].float().cpu().numpy()

        with torch.inference_mode(), self._adapter_context(adapter):
            yield forward

    def sequence_logits(self, ids: list[int], adapter: str | None) -> Any:
        import torch

        with torch.inference_mode(), self._adapter_context(adapter):
            inputs = torch.tensor([ids], device=self.device)
            return self.model(input_ids=inputs, use_cache=False).logits[0].float().cpu().numpy()


def _load_prefix(prefix: Any, cache: Any, adapter: str | None, prompt: list[int]) -> int:
    """Fills the empty `cache` with the cached blocks that open `prompt`; returns their length."""
    blocks = prefix.lookup(adapter, prompt)
    if not blocks:
        return 0
    arrays = concatenated(blocks, axis=1)
    for layer in range(len(arrays) // 2):
        cache.update(arrays[2 * layer][None], arrays[2 * layer + 1][None], layer)
    return len(blocks) * prefix.block


def _store_prefix(prefix: Any, cache: Any, adapter: str | None, prompt: list[int], reused: int):
    if not all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers):
        return  # sliding-window layers drop early positions: not a prefix to share

    def export(start: int, end: int) -> list[Any]:
        layers = cache.layers
        return [t[0, :, start:end].clone() for y in layers for t in (y.keys, y.values)]

    prefix.store(adapter, prompt, reused // prefix.block, export)


def _context_length(config: Any, tokenizer: Any) -> int:
    """The model's context: its position limit, else the tokenizer's declared maximum."""
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(min(getattr(tokenizer, "model_max_length", 2048), 1 << 20))


def _attach_adapters(base: Any, adapters: dict[str, str | Path]) -> Any:
    """Wrap `base` in a PeftModel holding every adapter by name (the base if there are none)."""
    if not adapters:
        return base
    from peft import PeftModel

    for name, path in adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name!r}: {path} has no adapter_config.json")
    items = iter(adapters.items())
    first_name, first_path = next(items)
    model = PeftModel.from_pretrained(base, str(first_path), adapter_name=first_name)
    for name, path in items:
        model.load_adapter(str(path), adapter_name=name)
    return model
