"""`TorchEngine`: transformers + peft, several LoRA adapters on one base model.

Generation is a plain token loop with a KV cache rather than `model.generate` + a streamer
thread: the loop knows exactly which token ended a reply (finish reason, token counts), samples
with a per-request `torch.Generator` (a seed reproduces a reply regardless of other requests),
and needs no second thread. Adapters are PEFT adapters loaded once; each request picks one with
`set_adapter`, or runs the base with adapters disabled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from slmforge.errors import InputError, ModelError
from slmforge.models.chat import stop_strings
from slmforge.models.load import load_causal_lm, load_tokenizer
from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Message, token_deltas


def sample_next(logits: Any, params: GenParams, generator: Any) -> int:
    """The next token id from the last position's logits: greedy at temperature 0, else
    temperature, top-k and top-p (nucleus) sampling."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class TorchEngine(BaseEngine):
    name = "torch"

    def __init__(
        self,
        model: str | Path,
        adapters: dict[str, str | Path] | None = None,
        device: str = "cpu",
        dtype: str = "auto",
    ) -> None:
        base = load_causal_lm(model, dtype=dtype, device=device)
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
        self.model_path = path
        self.model = model
        self.device = str(next(model.parameters()).device)
        self.tokenizer = tokenizer
        self._adapters = adapters
        self.stop_ids = _stop_token_ids(tokenizer, model)
        self._lock = threading.Lock()

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        if adapter is not None and adapter not in self._adapters:
            known = ", ".join(self._adapters) or "none loaded"
            raise InputError(f"unknown adapter {adapter!r} (known: {known})")
        # Checked here, not inside the stream, so bad requests fail before the first delta.
        return self._generate_locked(self._prompt_ids(messages), params, adapter)

    def _prompt_ids(self, messages: list[Message]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ModelError(f"{self.model_path} has no chat template; chat needs one")
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        # The template writes bos itself where the format has one.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _adapter_context(self, adapter: str | None) -> Any:
        if not self._adapters:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()

    def _generate_locked(
        self, prompt_ids: list[int], params: GenParams, adapter: str | None
    ) -> Iterator[Delta]:
        import torch

        generator = torch.Generator(device="cpu")
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        # One generation at a time: adapters are switched on the shared model.
        with self._lock, torch.inference_mode(), self._adapter_context(adapter):
            tokens = self._tokens(prompt_ids, params, generator)
            yield from token_deltas(tokens, self.tokenizer, self.stop_ids, params, len(prompt_ids))

    def _tokens(self, prompt_ids: list[int], params: GenParams, generator: Any) -> Iterator[int]:
        """Up to `max_tokens` sampled ids, one forward pass each after the prompt's prefill."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        inputs = torch.tensor([prompt_ids], device=self.device)
        for _ in range(params.max_tokens):
            out = self.model(input_ids=inputs, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token_id = sample_next(out.logits[0, -1].cpu(), params, generator)
            yield token_id
            inputs = torch.tensor([[token_id]], device=self.device)


def _stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """Ids that end a reply: single-token stop strings of the tokenizer plus the model's
    generation_config eos ids."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[s] for s in stop_strings(tokenizer) if s in vocab}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    return ids


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
