"""`OnnxEngine`: an ONNX Runtime GenAI model folder, with switchable LoRA adapters.

Prompts are rendered and tokenized with the folder's Hugging Face tokenizer, exactly as
`TorchEngine` does, so a prompt is the same token ids in both engines (the parity checks of
`slmforge optimize` rely on that). Decoding to text also uses that tokenizer, with the same
incremental detokenizer, and tokens are chosen by the shared sampler (`runtime/sampling.py`), so
sampling, log-probabilities and JSON mode behave the same in both engines. Adapters
(`*.onnx_adapter` written by optimize) are loaded once into `og.Adapters`; each request
activates one on its own generator, or none for the base model.

Forward passes run in one of two ways. Where the decoder allows it (CPU, GroupQueryAttention:
every model the builder makes for CPU), `runtime/onnx_batch.py` drives `model.onnx` with
onnxruntime directly: its cache is bound as both past and present, so a step copies nothing,
and one stream decodes ~1.5x faster than through onnxruntime-genai's generator (measured in
docs/benchmarks.md). With `max_batch` > 1 (the server's `--max-concurrency`) concurrent requests
then decode together in one pass per step (continuous batching, adapters included), still
chosen by each request's own sampler. Other folders (CUDA/DirectML builds, decoders without
GroupQueryAttention), or `decoder="genai"`, run through onnxruntime-genai's `og.Generator`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from slmforge.errors import ModelError
from slmforge.models.load import load_tokenizer
from slmforge.progress import warn
from slmforge.runtime.batching import BatchScheduler
from slmforge.runtime.local import Forward, LocalEngine
from slmforge.runtime.onnx_batch import OnnxBatchModel, batch_support
from slmforge.runtime.prefix_cache import PrefixCache


def default_adapters(folder: Path) -> dict[str, str]:
    return {path.stem: str(path) for path in sorted(folder.glob("*.onnx_adapter"))}


class OnnxEngine(LocalEngine):
    name = "onnx"

    def __init__(
        self,
        folder: str | Path,
        adapters: dict[str, str] | None = None,
        max_batch: int = 1,
        decoder: Literal["auto", "genai"] = "auto",
    ) -> None:
        self.folder = Path(folder)
        self.source = str(folder)
        if not (self.folder / "genai_config.json").is_file():
            raise ModelError(f"{folder} is not an ONNX model folder (no genai_config.json)")
        genai = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))
        self.context_length = self.max_length = int(genai["search"]["max_length"])
        adapters = default_adapters(self.folder) if adapters is None else adapters
        eos = genai["model"].get("eos_token_id")
        self._init_local(load_tokenizer(self.folder), list(adapters), eos)
        self.direct: OnnxBatchModel | None = None
        self.model = self._og_adapters = None
        reason = batch_support(self.folder, genai) if decoder == "auto" else "genai was asked for"
        if reason is None:
            self.direct = OnnxBatchModel(
                self.folder, genai, adapters, max_batch, self.context_length
            )
            if max_batch > 1:
                self.batcher = BatchScheduler(self.direct, max_batch)
            return
        if max_batch > 1:
            warn(f"{self.folder}: requests decode one at a time: {reason}")
        self._load_genai(adapters)

    def enable_prefix_cache(self, max_bytes: int) -> bool:
        if self.direct is None:  # onnxruntime-genai's generator keeps its cache to itself
            return False
        self.prefix_cache = self.direct.prefix_cache = PrefixCache(max_bytes)
        return True

    def _load_genai(self, adapters: dict[str, str]) -> None:
        import onnxruntime_genai as og

        self.model = og.Model(str(self.folder))
        if adapters:
            self._og_adapters = og.Adapters(self.model)
            for adapter_name, path in adapters.items():
                self._og_adapters.load(str(path), adapter_name)

    def generator(self, max_length: int, adapter: str | None) -> Any:
        """A generator with room for `max_length` tokens, with the adapter active. Tokens are
        chosen by our `Sampler`, so the generator only runs forward passes."""
        import onnxruntime_genai as og

        gen_params = og.GeneratorParams(self.model)
        gen_params.set_search_options(max_length=min(max_length, self.max_length), do_sample=False)
        generator = og.Generator(self.model, gen_params)
        if adapter is not None:
            generator.set_active_adapter(self._og_adapters, adapter)
        return generator

    @contextmanager
    def session(self, adapter: str | None, max_length: int) -> Iterator[Forward]:
        if self.direct is not None:
            with self.direct.single(adapter) as forward:
                yield forward
            return
        generator = self.generator(max_length, adapter)

        def forward(new_ids: list[int]) -> Any:
            generator.append_tokens(new_ids)
            return generator.get_output("logits")[0, -1]

        yield forward

    def sequence_logits(self, ids: list[int], adapter: str | None) -> Any:
        if self.direct is not None:
            return self.direct.sequence_logits(ids, adapter)
        generator = self.generator(len(ids) + 1, adapter)
        generator.append_tokens(ids)
        return generator.get_output("logits")[0]

    def logits(self, token_ids: list[int], adapter: str | None = None) -> Any:
        """Logits for every position of `token_ids` in one forward pass (numpy, [len, vocab])."""
        self.check_adapter(adapter)
        self.check_room(len(token_ids))
        with self._lock:
            return self.sequence_logits(token_ids, adapter)
