"""What kind of row a record is, from its keys: a preference pair (DPO/ORPO/SimPO) or a
supervised example. Both readers use it, so a pair file given to a supervised command (and the
reverse) is refused with one clear line instead of a finding per missing field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Shape = Literal["pairs", "examples"]

# The keys that identify each pair format (any one of the answer keys is enough, so a row with
# one side missing is read as a pair and gets a "missing side" finding).
PAIR_FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "openai_dpo": ("preferred_output", "non_preferred_output"),
    "trl": ("chosen", "rejected"),
}
_PAIR_ROWS = {
    "openai_dpo": "input/preferred_output/non_preferred_output",
    "trl": "prompt/chosen/rejected",
}
_EXAMPLE_ROWS = "messages, prompt/response, instruction/output or conversations"


def pair_format_of(keys: Iterable[str], input_format: str = "auto") -> str | None:
    """The pair format a record with `keys` is in, or None when it is not a pair row."""
    if input_format in PAIR_FORMAT_KEYS:
        return input_format
    keys = set(map(str, keys))
    return next((name for name, wanted in PAIR_FORMAT_KEYS.items() if keys & set(wanted)), None)


def pair_row_message(fmt: str, purpose: str = "this command") -> str:
    """Why a pair row cannot be read as a supervised example."""
    return (
        f"this is a preference row ({_PAIR_ROWS[fmt]}); {purpose} needs supervised example "
        f"rows ({_EXAMPLE_ROWS}); preference pairs train with --objective dpo, orpo or simpo"
    )


def example_row_message(
    fmt: str, purpose: str = "preference fine-tuning (dpo, orpo, simpo)"
) -> str:
    """Why a supervised row cannot be read as a preference pair."""
    return (
        f"this is a supervised row ({fmt}); {purpose} needs preference pair rows "
        f"({_PAIR_ROWS['openai_dpo']} or {_PAIR_ROWS['trl']})"
    )
