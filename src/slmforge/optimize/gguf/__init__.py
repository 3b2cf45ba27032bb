"""GGUF export for llama.cpp and Ollama: the model, LoRA adapter files, an Ollama Modelfile,
verified against PyTorch. Entry point: `export_gguf(GgufConfig)` (run.py).

families.py   llama.cpp names, RoPE permutation and hyper-parameters per model family
tokenizer.py  the tokenizer (llama.cpp's gpt2 or llama model), special ids and chat template
spm.py        SentencePiece-style tokenizers: scores from merge ranks, llama.cpp's tokenizer
              re-done in Python to check the ids before writing
writer.py     streaming writer (one tensor in memory) and the precisions' tensor types
lora.py       PEFT LoRA adapters as llama.cpp adapter files, or merged
modelfile.py  Ollama Modelfiles (Go templates per chat format)
readback.py   the written file read back as Hugging Face weights
check.py      parity with PyTorch (KL, top-1 agreement) before the export is kept
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from slmforge.config.gguf import GgufConfig


def export_gguf(cfg: GgufConfig) -> Path:
    from slmforge.optimize.gguf.run import export_gguf as run

    return run(cfg)


__all__ = ["export_gguf"]
