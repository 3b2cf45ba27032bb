"""Confident top-1 agreement is judged as far as its positions can show it."""

from __future__ import annotations

import pytest

from slmforge.errors import RunError
from slmforge.optimize.verify import Parity, agreement_too_low, check


def _parity(agreed: int, positions: int, kl: float = 0.01) -> Parity:
    share = agreed / positions if positions else 1.0
    return Parity(2, 32, kl, kl, positions, share, 0.9, 0.5, 1.0)


@pytest.mark.parametrize(
    ("agreed", "positions", "fails"),
    [
        (0, 0, False),  # nothing confident: nothing to judge
        (0, 1, False),  # one flipped argmax is no evidence (P = 0.10 at 90%)
        (1, 2, False),
        (5, 8, True),  # P(X <= 5 | 8, 0.9) = 0.038
        (6, 8, False),  # P = 0.19
        (80, 100, True),
        (88, 100, False),
        (100, 100, False),
    ],
)
def test_agreement_is_a_one_sided_binomial_test(agreed, positions, fails) -> None:
    assert agreement_too_low(_parity(agreed, positions), 0.9) is fails


def test_a_bar_of_one_fails_on_any_disagreement() -> None:
    assert agreement_too_low(_parity(99, 100), 1.0)
    assert not agreement_too_low(_parity(100, 100), 1.0)


def test_check_fails_on_agreement_or_kl() -> None:
    check(_parity(0, 1), "int4", 0.5, 0.9, "base")
    with pytest.raises(RunError, match="binomial test"):
        check(_parity(50, 100), "int4", 0.5, 0.9, "base")
    with pytest.raises(RunError, match="verification failed for base"):
        check(_parity(100, 100, kl=0.9), "int4", 0.5, 0.9, "base")
