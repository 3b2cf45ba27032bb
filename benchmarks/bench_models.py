"""The models the speed benchmarks share, built once and cached under `.cache/bench/`.

The `small` Llama (~95M parameters) from `slmforge.models.tiny`, pretrained `PRETRAIN_STEPS`
steps (its default 12 leave logits nearly flat; 60 take the loss from ~9 to ~6.5), its ONNX
builds made with the `slmforge optimize` CLI exactly as a user runs it, and GGUF files of the
same weights for llama.cpp (`gguf_export.py`). A folder or file that exists is complete: every
builder writes it atomically.

The quantization benchmark's reference model (`reference_model`) is the `bench` Llama: trained
until quantization quality means something, with 1 in 20 docstrings held out of its training;
its manifest records its next-token accuracy on them. `reference_data` writes the held-out
chats (the text quantization is measured on) and chats of the training docstrings (calibration
prompts) as data files.
"""

from __future__ import annotations

import json
import os
import random
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


REFERENCE_SIZE = "bench"
REFERENCE = f"reference-llama-{REFERENCE_SIZE}"


def reference_model() -> Path:
    folder = CACHE / REFERENCE
    if not (folder / "slmforge.json").is_file():
        from slmforge.models.tiny import build

        if "OMP_NUM_THREADS" not in os.environ:
            import torch

            # On the shared 2-core VM two threads ran several times slower than one whenever
            # another process held a core (threads wait for each other at every op).
            torch.set_num_threads(1)
        log(f"building {folder} (~15 minutes on a busy 2-core machine)")
        build("llama", folder, size=REFERENCE_SIZE, force=True)
    return folder


def reference_data() -> dict[str, Path]:
    """The reference model's held-out chats (`eval`) and training-domain chats
    (`calibration`) as jsonl message rows, split exactly as its pretraining split them."""
    from slmforge.models.corpus import is_heldout, stdlib_docstrings, summary_chats
    from slmforge.models.tiny import SIZES

    spec = SIZES[REFERENCE_SIZE]
    docs = stdlib_docstrings(spec.corpus_chars)
    parts = {
        "eval": tuple(d for d in docs if is_heldout(d, spec.heldout_every)),
        "calibration": tuple(d for d in docs if not is_heldout(d, spec.heldout_every)),
    }
    folder = CACHE / f"{REFERENCE}-data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        path = folder / f"{name}.jsonl"
        chats = summary_chats(part, None)
        # calibration reads the first rows; shuffled, they span the library, not its first
        # modules in alphabetical order
        random.Random(0).shuffle(chats)
        rows = [json.dumps({"messages": chat}) + "\n" for chat in chats]
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(rows), encoding="utf-8")
        partial.rename(path)
        paths[name] = path
    return paths


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


def tiny_model(arch: str = "llama") -> Path:
    """The `tiny` model of `arch` (~0.9M parameters, pretrained 600 steps: about two minutes on
    2 cores), what the tests and the preference benchmarks train on."""
    folder = CACHE / f"tiny-{arch}"
    if not (folder / "slmforge.json").is_file():
        from slmforge.models.tiny import build

        log(f"building {folder} (minutes)")
        build(arch, folder, force=True)
    return folder
