"""Object ids shaped as the OpenAI API's: a kind prefix and 24 random hex digits."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """`new_id("ftjob-")` -> `ftjob-` + 24 hex digits; the prefix carries its own separator
    (OpenAI spells some with `-`, checkpoints with `_`)."""
    return prefix + secrets.token_hex(12)
