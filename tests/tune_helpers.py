"""Inputs of the tune tests: a slice of the sample data, a search space with a clearly bad
first trial, and a base config small enough for a tiny model (6 steps, eval every 2)."""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.data.sample import sample_pairs

SPACE = """\
params:
  lr: {type: float, low: 1.0e-3, high: 3.0, log: true}
  lora_r: {type: categorical, choices: [4, 8]}
first:
  - {lr: 3.0e-2, lora_r: 8}
  - {lr: 1.0e-2, lora_r: 4}
  - {lr: 3.0, lora_r: 8}  # 100x too high: the pruner stops it at its first evaluation
"""
BASE = """\
max_steps: 6
eval_every: 2
batch_size: 4
max_seq_len: 96
lora_dropout: 0.0
target_modules: [q_proj, v_proj]
samples: 0
"""


def write_inputs(root: Path) -> dict[str, Path]:
    pairs = sample_pairs()
    paths = {}
    for name, rows in (("train", pairs[:48]), ("eval", pairs[-8:])):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name, text in (("space", SPACE), ("base", BASE)):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    return paths
