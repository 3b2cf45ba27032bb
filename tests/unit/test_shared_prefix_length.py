"""When a micro-batch's opening is run once (`train/shared_prefix.py`): its length, and the
runs that cannot share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from slmforge.config.finetune import FinetuneConfig
from slmforge.train import shared_prefix
from slmforge.train.shared_prefix import shared_length, why_not_shared


def _keep(rows: list[list[int]], first_scored: list[int]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, (row, start) in enumerate(zip(rows, first_scored, strict=True)):
        keep[index, start : len(row) - 1] = True
    return keep


@pytest.fixture
def any_saving(monkeypatch):
    monkeypatch.setattr(shared_prefix, "MIN_SAVED_TOKENS", 1)


def test_the_common_prefix_up_to_the_first_difference(any_saving) -> None:
    rows = [[1, 2, 3, 4, 9, 9, 9, 9], [1, 2, 3, 5, 9, 9, 9], [1, 2, 3, 4, 8, 8, 8, 8, 8]]
    assert shared_length(rows, _keep(rows, [6, 6, 6])) == 3


def test_no_shared_position_is_scored(any_saving) -> None:
    rows = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 9]]
    assert shared_length(rows, _keep(rows, [7, 7])) == 7
    assert shared_length(rows, _keep(rows, [7, 4])) == 4  # row 2 scores position 4


def test_every_row_keeps_a_remainder(any_saving) -> None:
    rows = [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
    assert shared_length(rows, torch.zeros(2, 6, dtype=torch.bool)) == 3


def test_one_row_or_too_little_saving_runs_plainly() -> None:
    rows = [[7] * 30 + [1], [7] * 30 + [2]]
    keep = torch.zeros(2, 31, dtype=torch.bool)
    assert shared_length(rows[:1], keep[:1]) == 0
    assert shared_length(rows, keep) == 0  # saves 30 token passes, under MIN_SAVED_TOKENS
    assert shared_length(rows * 2, torch.zeros(4, 31, dtype=torch.bool)) == 30  # saves 90


def _cfg(**options) -> FinetuneConfig:
    return FinetuneConfig(
        **({"model": "m", "data": "d.jsonl", "out": "o", "max_seq_len": 1024} | options)
    )


def _model(**config) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(**config))


@pytest.mark.parametrize(
    ("cfg", "model", "distributed", "checkpointing", "select", "reason"),
    [
        (_cfg(), _model(), False, False, True, None),
        (_cfg(share_prefix=False), _model(), False, False, True, "--no-share-prefix"),
        (_cfg(packing=True), _model(), False, False, True, "--packing"),
        (_cfg(), _model(), False, True, True, "gradient checkpointing"),
        (_cfg(), _model(), True, False, True, "several processes"),
        (_cfg(), _model(), False, False, False, "does not select logits"),
        (_cfg(), _model(sliding_window=512), False, False, True, "sliding window of 512"),
        (
            _cfg(max_seq_len=4096),  # Phi-3-mini-4k's window, rows up to 4096 tokens
            _model(sliding_window=2047),
            False,
            False,
            True,
            "sliding window of 2047",
        ),
        (_cfg(), _model(sliding_window=4096), False, False, True, None),  # longer than rows
        (_cfg(), _model(sliding_window=512, use_sliding_window=False), False, False, True, None),
        (
            _cfg(),
            _model(sliding_window=512, layer_types=["full_attention"]),
            False,
            False,
            True,
            None,
        ),
        (
            _cfg(),
            _model(sliding_window=512, layer_types=["sliding_attention", "full_attention"]),
            False,
            False,
            True,
            "sliding window of 512",
        ),
        (
            _cfg(max_seq_len=8192),  # Phi-3.5-mini: long factors past 4096 positions
            _model(
                rope_parameters={"rope_type": "longrope", "original_max_position_embeddings": 4096}
            ),
            False,
            False,
            True,
            "change past 4096 tokens",
        ),
        (
            _cfg(max_seq_len=2048),
            _model(
                rope_parameters={"rope_type": "longrope", "original_max_position_embeddings": 4096}
            ),
            False,
            False,
            True,
            None,
        ),
        (
            _cfg(max_seq_len=4096),
            _model(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=2048),
            False,
            False,
            True,
            "change past 2048 tokens",
        ),
        (
            _cfg(max_seq_len=8192),
            _model(rope_parameters={"rope_type": "llama3", "factor": 32.0}),
            False,
            False,
            True,
            None,
        ),
    ],
)
def test_runs_that_cannot_share_say_why(
    cfg, model, distributed, checkpointing, select, reason
) -> None:
    said = why_not_shared(cfg, model, distributed, checkpointing, select)
    assert said is None if reason is None else reason in said
