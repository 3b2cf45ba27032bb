"""`slmforge models tiny --size` offers every size the builder knows, and only those."""

from __future__ import annotations

from typing import get_args

from typer.testing import CliRunner

from slmforge.cli.main import app
from slmforge.config.models import TinyModelConfig
from slmforge.models.tiny import SIZES


def test_the_cli_sizes_are_the_builders_sizes() -> None:
    choices = get_args(TinyModelConfig.model_fields["size"].annotation)
    assert set(choices) == set(SIZES)


def test_an_unknown_size_is_refused_before_any_work(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["models", "tiny", "--size", "huge", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "bench" in result.output and "small" in result.output
    assert not (tmp_path / "m").exists()
