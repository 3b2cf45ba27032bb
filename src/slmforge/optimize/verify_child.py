"""The ONNX phase of verification in a fresh interpreter (`python -m
slmforge.optimize.verify_child DIR`), talking through files in DIR: a request in, every
variant's decoded sequences and logits out. A separate interpreter, because ONNX Runtime keeps
much of what it allocated after its session is dropped, and PyTorch loads next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.errors import RunError
from slmforge.optimize.verify import OnnxRun, Variant, onnx_phase


def onnx_phase_in_child(
    folder: Path, adapters: dict[str, Path], merged: bool, prompts: list[Any], steps: int
) -> list[Variant]:
    """`onnx_phase` in a fresh interpreter (`python -m slmforge.optimize.verify DIR`), talking
    through files: unlike multiprocessing, it never re-imports the caller's main script."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="slmforge-verify-") as tmp:
        request = {
            "folder": str(folder),
            "adapters": {name: str(path) for name, path in adapters.items()},
            "merged": merged,
            "prompts": prompts,
            "steps": steps,
        }
        (Path(tmp) / "request.json").write_text(json.dumps(request), encoding="utf-8")
        command = [sys.executable, "-m", "slmforge.optimize.verify_child", tmp]
        proc = subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RunError(
                f"verification: decoding with the ONNX build failed (exit {proc.returncode}); "
                "its error is above"
            )
        return _read_variants(Path(tmp))


def _write_variants(folder: Path, variants: list[Variant]) -> None:
    import json

    import numpy as np

    meta = [
        {
            "label": v.label,
            "adapter": v.adapter,
            "runs": [{"prompt_len": r.prompt_len, "sequence": r.sequence} for r in v.runs],
        }
        for v in variants
    ]
    arrays = {f"v{i}_r{j}": r.logits for i, v in enumerate(variants) for j, r in enumerate(v.runs)}
    np.savez(folder / "logits.npz", **arrays)
    (folder / "variants.json").write_text(json.dumps(meta), encoding="utf-8")


def _read_variants(folder: Path) -> list[Variant]:
    import json

    import numpy as np

    meta = json.loads((folder / "variants.json").read_text(encoding="utf-8"))
    with np.load(folder / "logits.npz") as arrays:
        return [
            Variant(
                v["label"],
                v["adapter"],
                [
                    OnnxRun(r["prompt_len"], r["sequence"], arrays[f"v{i}_r{j}"])
                    for j, r in enumerate(v["runs"])
                ],
            )
            for i, v in enumerate(meta)
        ]


def _child_main(folder: Path) -> int:
    import json

    from slmforge.errors import SlmforgeError

    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    adapters = {name: Path(path) for name, path in request["adapters"].items()}
    try:
        variants = onnx_phase(
            Path(request["folder"]),
            adapters,
            request["merged"],
            request["prompts"],
            request["steps"],
        )
    except SlmforgeError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 1
    _write_variants(folder, variants)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_child_main(Path(sys.argv[1])))
