"""Bootstrap intervals, the paired permutation test and win/tie/loss counting."""

from __future__ import annotations

import pytest

from slmforge.evaluate.stats import bootstrap_mean, compare, paired_permutation_p, percentiles


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [0.0, 1.0] * 50
    est = bootstrap_mean(values, resamples=2000, seed=1)
    assert est.mean == 0.5 and est.n == 100
    # the standard error of a mean of 100 fair coin flips is 0.05: the 95% interval is ~ +-0.1
    assert 0.38 < est.ci_low < 0.44 and 0.56 < est.ci_high < 0.62
    assert bootstrap_mean(values, resamples=2000, seed=1) == est


def test_bootstrap_edge_cases():
    assert bootstrap_mean([]).mean is None
    constant = bootstrap_mean([0.7] * 10)
    assert (constant.ci_low, constant.mean, constant.ci_high) == (0.7, 0.7, 0.7)


def test_paired_permutation_test():
    # 20 rows all better by 1: only the all-plus and all-minus sign patterns are as extreme,
    # so p is the smallest the 10,000 permutations can give: 1 / 10,001
    assert paired_permutation_p([1.0] * 20) == pytest.approx(1 / 10_001)
    assert paired_permutation_p([0.0] * 20) == 1.0
    assert paired_permutation_p([1.0, -1.0] * 10) > 0.9
    # 3 rows: 2 of the 8 sign patterns are as extreme as the observed one: p ~ 0.25
    assert paired_permutation_p([1.0, 1.0, 1.0]) == pytest.approx(0.25, abs=0.02)


def test_compare_counts_wins_ties_losses_on_shared_rows():
    a = [1.0, 0.5, 0.2, None, 0.9]
    b = [0.5, 0.5, 0.4, 0.3, None]
    c = compare("tuned", "base", "f1", a, b, higher_is_better=True)
    assert (c.n, c.wins, c.ties, c.losses) == (3, 1, 1, 1)
    assert c.diff.mean == pytest.approx((0.5 + 0.0 - 0.2) / 3)
    lower = compare("tuned", "base", "refusal", [0.0, 1.0], [1.0, 1.0], higher_is_better=False)
    assert (lower.wins, lower.ties, lower.losses) == (1, 1, 0)


def test_percentiles():
    stats = percentiles([1.0, 2.0, 3.0, 4.0, None])
    assert stats["n"] == 4 and stats["mean"] == 2.5 and stats["p50"] == 2.5 and stats["max"] == 4
    assert percentiles([])["p95"] is None
