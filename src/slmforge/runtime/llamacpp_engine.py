"""`LlamaCppEngine`: a GGUF folder (`slmforge optimize --format gguf`) run by llama.cpp through
llama-cpp-python (the optional `llamacpp` extra).

llama.cpp only runs the forward passes: prompts are rendered and tokenized with the folder's
Hugging Face tokenizer (saved beside the GGUF file, the same vocabulary), and tokens are chosen
by slmforge's own sampler, so stop tokens, seeds, logprobs, structured outputs and tool calls
behave exactly as with the PyTorch and ONNX engines. The GGUF LoRA files of the folder are
loaded once and switched per request (`llama_set_adapters_lora`), with the scale their
`adapter.lora.alpha` metadata implies, as llama.cpp's own server does.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from slmforge.artifacts import read_manifest
from slmforge.errors import MissingDependencyError, ModelError
from slmforge.models.load import load_tokenizer
from slmforge.runtime.local import Forward, LocalEngine

MAX_CONTEXT = 8192  # KV cache allocated up front: the model's context, capped


def gguf_files(folder: Path) -> tuple[Path, dict[str, str]]:
    """The model file and the adapter files (by name) of a GGUF folder."""
    manifest = read_manifest(folder)
    details = manifest.details if manifest is not None else {}
    if details.get("model_file"):
        model = folder / details["model_file"]
    else:
        found = sorted(folder.glob("model-*.gguf")) or sorted(folder.glob("*.gguf"))
        if not found:
            raise ModelError(f"{folder}: no .gguf model file")
        model = found[0]
    adapters = {
        name: str(folder / info["file"])
        for name, info in (details.get("adapters") or {}).items()
        if info.get("file")
    }
    return model, adapters


def is_gguf_folder(folder: Path) -> bool:
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None:
        return manifest.kind == "gguf_model"
    return folder.is_dir() and any(folder.glob("*.gguf"))


class LlamaCppEngine(LocalEngine):
    name = "llama.cpp"

    def __init__(
        self, folder: str | Path, adapters: dict[str, str] | None = None, threads: int | None = None
    ) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependencyError("llama-cpp-python", "llamacpp", "a GGUF folder") from None
        self.folder, self.source = Path(folder), str(folder)
        model_file, default = gguf_files(self.folder)
        adapters = default if adapters is None else adapters
        tokenizer = load_tokenizer(self.folder)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"{folder}: no tokenizer with a chat template beside the GGUF file")
        metadata = llama_cpp.Llama(str(model_file), vocab_only=True, verbose=False).metadata
        trained = int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 0))
        context = min(trained or MAX_CONTEXT, MAX_CONTEXT)
        self.llm = llama_cpp.Llama(
            str(model_file), n_ctx=context, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False,
        )  # fmt: skip
        self.context_length = context
        self._api = llama_cpp
        self._loras = {name: self._load_lora(path) for name, path in adapters.items()}
        self._init_local(tokenizer, list(adapters), tokenizer.eos_token_id)

    def _load_lora(self, path: str) -> Any:
        handle = self._api.llama_adapter_lora_init(self.llm.model, path.encode())
        if not handle:
            raise ModelError(f"{path}: llama.cpp cannot load this LoRA adapter")
        return handle

    def _use_adapter(self, adapter: str | None) -> None:
        if adapter is None:
            self._api.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
            return
        handle = self._loras[adapter]
        handles = (type(handle) * 1)(handle)
        scales = (ctypes.c_float * 1)(1.0)
        self._api.llama_set_adapters_lora(self.llm.ctx, handles, 1, scales)

    def _logits(self) -> np.ndarray:
        pointer = self._api.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).copy()

    @contextmanager
    def session(self, adapter: str | None, max_length: int) -> Iterator[Forward]:
        self.llm.reset()  # a new sequence: the KV cache is rewritten from position 0
        self._use_adapter(adapter)

        def forward(new_ids: list[int]) -> Any:
            self.llm.eval(new_ids)
            return self._logits()

        yield forward

    def sequence_logits(self, ids: list[int], adapter: str | None) -> Any:
        """Logits at every position (one token per pass: the context keeps only the last
        position's logits, which keeps its memory small for generation)."""
        rows = []
        with self.session(adapter, len(ids)) as forward:
            for token in ids:
                rows.append(forward([token]))
        return np.stack(rows)
