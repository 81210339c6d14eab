"""Summaries, speedup intervals and the Mann-Whitney U test, against numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dqar_bench.measure.stats import Measurement, mann_whitney_u, min_detectable_p, percentile, speedup


def test_summary_matches_numpy():
    rng = np.random.default_rng(3)
    samples = rng.lognormal(0.0, 0.2, size=11).tolist()
    m = Measurement.of(samples)
    p10, p25, p50, p75, p90 = np.percentile(samples, [10, 25, 50, 75, 90])
    assert m.median == pytest.approx(p50)
    assert m.mean == pytest.approx(np.mean(samples))
    assert (m.p10, m.p90) == (pytest.approx(p10), pytest.approx(p90))
    assert m.iqr == pytest.approx(p75 - p25)
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5


@pytest.mark.parametrize(
    "samples, flag",
    [([1.0, 1.01, 0.99, 1.0], "ok"), ([1.0, 1.1, 0.9, 1.0, 1.15, 0.85], "noisy"), ([0.5, 1.0, 1.0, 1.8], "unreliable"), ([1.0], "single sample")],
)
def test_noise_flags_follow_relative_iqr(samples, flag):
    m = Measurement.of(samples)
    assert m.noise == flag
    if m.n > 1:
        assert m.summary()["relative_iqr"] == pytest.approx(m.iqr / m.median)


def test_speedup_is_ratio_of_medians_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    base = (1.0 + 0.02 * rng.standard_normal(12)).tolist()
    fast = (0.5 + 0.01 * rng.standard_normal(12)).tolist()
    s = speedup(base, fast)
    assert s.value == pytest.approx(np.median(base) / np.median(fast))
    assert s.low < s.value < s.high
    assert 1.8 < s.low and s.high < 2.2
    assert speedup(base, fast) == s  # seeded: the same table every time
    noisier = speedup(base, (0.5 + 0.1 * rng.standard_normal(12)).tolist())
    assert noisier.high - noisier.low > s.high - s.low  # more noise, wider interval


def test_speedup_claims_no_interval_from_one_sample():
    s = speedup([1.0], [0.5, 0.52])
    assert s.value == pytest.approx(1.0 / 0.51) and s.low is None and s.high is None
    assert s.label() == "1.96x"


@pytest.mark.parametrize("n1, n2, shift", [(3, 3, 0.0), (6, 6, 0.1), (5, 8, 0.05), (12, 10, 0.2), (40, 35, 0.05)])
def test_mann_whitney_matches_scipy(n1, n2, shift):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n1 * 100 + n2)
    a = rng.normal(1.0 + shift, 0.1, n1).tolist()
    b = rng.normal(1.0, 0.1, n2).tolist()
    ours = mann_whitney_u(a, b)
    method = "exact" if ours.method == "exact" else "asymptotic"
    theirs = stats.mannwhitneyu(a, b, alternative="two-sided", method=method)
    assert ours.u == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)


def test_mann_whitney_with_ties_uses_the_corrected_normal_approximation():
    stats = pytest.importorskip("scipy.stats")
    a, b = [1, 1, 2, 2, 3, 3], [2, 3, 3, 4, 4, 4]
    ours = mann_whitney_u(a, b)
    assert ours.method == "normal approximation"
    assert ours.p_value == pytest.approx(stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue)
    assert mann_whitney_u([1.0] * 5, [1.0] * 5).p_value == 1.0


def test_separated_samples_reach_the_smallest_possible_p():
    a, b = [2.0 + i * 0.01 for i in range(6)], [1.0 + i * 0.01 for i in range(6)]
    assert mann_whitney_u(a, b).p_value == pytest.approx(min_detectable_p(6, 6)) == pytest.approx(2 / math.comb(12, 6))
    assert min_detectable_p(3, 3) == pytest.approx(0.1)  # three runs each can never be significant at 0.01
