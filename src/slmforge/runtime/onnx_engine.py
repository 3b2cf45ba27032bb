"""`OnnxEngine`: an ONNX Runtime GenAI model folder, with switchable LoRA adapters.

Prompts are rendered and tokenized with the folder's Hugging Face tokenizer, exactly as
`TorchEngine` does, so a prompt is the same token ids in both engines (the parity checks of
`slmforge optimize` rely on that). Decoding to text also uses that tokenizer, with the same
incremental detokenizer. Adapters (`*.onnx_adapter` written by optimize) are loaded once into
`og.Adapters`; each request activates one on its own generator, or none for the base model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmforge.errors import InputError, ModelError
from slmforge.models.chat import stop_strings
from slmforge.models.load import load_tokenizer
from slmforge.runtime.engine import BaseEngine, Delta, GenParams, Message, token_deltas


def _default_adapters(folder: Path) -> dict[str, str]:
    return {path.stem: str(path) for path in sorted(folder.glob("*.onnx_adapter"))}


class OnnxEngine(BaseEngine):
    name = "onnx"

    def __init__(self, folder: str | Path, adapters: dict[str, str] | None = None) -> None:
        import onnxruntime_genai as og

        self.folder = Path(folder)
        if not (self.folder / "genai_config.json").is_file():
            raise ModelError(f"{folder} is not an ONNX model folder (no genai_config.json)")
        self.model = og.Model(str(self.folder))
        self.tokenizer = load_tokenizer(self.folder)
        genai = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))
        self.max_length = int(genai["search"]["max_length"])
        eos = genai["model"].get("eos_token_id")
        self.stop_ids = set([eos] if isinstance(eos, int) else eos or [])
        vocab = self.tokenizer.get_vocab()
        self.stop_ids |= {vocab[s] for s in stop_strings(self.tokenizer) if s in vocab}
        adapters = _default_adapters(self.folder) if adapters is None else adapters
        self._adapter_names = list(adapters)
        self._og_adapters = None
        if adapters:
            self._og_adapters = og.Adapters(self.model)
            for adapter_name, path in adapters.items():
                self._og_adapters.load(str(path), adapter_name)
        self._lock = threading.Lock()

    def adapters(self) -> list[str]:
        return list(self._adapter_names)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ModelError(f"{self.folder} has no chat template; chat needs one")
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapter_names:
            known = ", ".join(self._adapter_names) or "none loaded"
            raise InputError(f"unknown adapter {adapter!r} (known: {known})")

    def generator(self, prompt_len: int, params: GenParams, adapter: str | None) -> Any:
        """A generator sized for the prompt plus `max_tokens`, with the adapter active."""
        import onnxruntime_genai as og

        if prompt_len >= self.max_length:
            raise InputError(f"prompt of {prompt_len} tokens fills the context ({self.max_length})")
        options: dict[str, Any] = {
            "max_length": min(prompt_len + params.max_tokens, self.max_length),
            "do_sample": params.temperature > 0,
        }
        if params.temperature > 0:
            options |= {"temperature": params.temperature, "top_p": params.top_p}
            options["top_k"] = params.top_k or 0
            if params.seed is not None:
                options["random_seed"] = params.seed
        gen_params = og.GeneratorParams(self.model)
        gen_params.set_search_options(**options)
        generator = og.Generator(self.model, gen_params)
        if adapter is not None:
            generator.set_active_adapter(self._og_adapters, adapter)
        return generator

    def generate(
        self, messages: list[Message], params: GenParams, adapter: str | None = None
    ) -> Iterator[Delta]:
        self._check_adapter(adapter)
        # Checked here, not inside the stream, so bad requests fail before the first delta.
        prompt = self.prompt_ids(messages)
        return self._stream(prompt, params, adapter)

    def _stream(self, prompt: list[int], params: GenParams, adapter: str | None) -> Iterator[Delta]:
        with self._lock:
            generator = self.generator(len(prompt), params, adapter)
            generator.append_tokens(prompt)
            tokens = _sampled_ids(generator)
            yield from token_deltas(tokens, self.tokenizer, self.stop_ids, params, len(prompt))

    def logits(self, token_ids: list[int], adapter: str | None = None) -> Any:
        """Logits for every position of `token_ids` in one forward pass (numpy, [len, vocab])."""
        self._check_adapter(adapter)
        with self._lock:
            generator = self.generator(len(token_ids), GenParams(max_tokens=1), adapter)
            generator.append_tokens(token_ids)
            return generator.get_output("logits")[0]


def _sampled_ids(generator: Any) -> Iterator[int]:
    """Ids from an onnxruntime-genai generator, one step at a time, until it is done."""
    while not generator.is_done():
        generator.generate_next_token()
        yield int(generator.get_next_tokens()[0])
