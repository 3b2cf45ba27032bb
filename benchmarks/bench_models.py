"""The models the speed benchmarks share, built once and cached under `.cache/bench/`.

The `small` Llama (~95M parameters) from `slmforge.models.tiny`, pretrained `PRETRAIN_STEPS`
steps (its default 12 leave logits nearly flat; 60 take the loss from ~9 to ~6.5), its ONNX
builds made with the `slmforge optimize` CLI exactly as a user runs it, and GGUF files of the
same weights for llama.cpp (`gguf_export.py`). A folder or file that exists is complete: every
builder writes it atomically.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
PRETRAIN_STEPS = 60
NAME = f"small-llama-p{PRETRAIN_STEPS}"


def slmforge_command() -> str:
    """The `slmforge` script beside this interpreter (the CLI exactly as users run it)."""
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "slmforge")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def small_model() -> Path:
    folder = CACHE / NAME
    if not (folder / "slmforge.json").is_file():
        from slmforge.models.tiny import build

        log(f"building {folder} (minutes)")
        build("llama", folder, size="small", pretrain_steps=PRETRAIN_STEPS, force=True)
    return folder


def onnx_model(precision: str) -> Path:
    folder = CACHE / f"{NAME}-onnx-{precision}"
    if not (folder / "slmforge.json").is_file():
        source = small_model()
        cmd = [
            slmforge_command(),
            "--log-format",
            "plain",
            "optimize",
            "--model",
            str(source),
            "--precision",
            precision,
            "--out",
            str(folder),
            "--force",
        ]
        log("running " + " ".join(cmd))
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        log(f"built {folder} in {time.perf_counter() - started:.0f}s")
    return folder


def gguf_model(kind: str) -> Path:
    path = CACHE / f"{NAME}-{kind}.gguf"
    if not path.is_file():
        from gguf_export import export

        partial = path.with_name(path.name + ".partial")
        export(small_model(), partial, kind)
        partial.rename(path)
        log(f"wrote {path}")
    return path


def size_mib(path: Path) -> float:
    files = (
        [path] if path.is_file() else list(path.glob("*.onnx*")) or list(path.glob("*.safetensors"))
    )
    return sum(f.stat().st_size for f in files) / 2**20
