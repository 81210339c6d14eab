"""Summaries, speedup intervals and the Mann-Whitney U test, pinned on samples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dqar_bench.measure.stats import Measurement, mann_whitney_u, min_detectable_p, paired_speedup, percentile, speedup


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


def test_bootstrap_interval_on_a_known_sample():
    """Ten ratios, five 1s and five 2s: a resample's median is 1, 1.5 or 2 with chances
    0.377, 0.246, 0.377 (binomial), so the 2.5 % and 97.5 % percentiles are exactly 1 and 2."""
    s = paired_speedup([1.0] * 5 + [2.0] * 5, [1.0] * 10)
    assert (s.value, s.low, s.high) == (1.5, 1.0, 2.0)
    # the same through independent samples: the baseline's median is 2 whatever is drawn
    t = speedup([2.0] * 10, [1.0] * 5 + [2.0] * 5)
    assert (t.value, t.low, t.high) == (pytest.approx(2 / 1.5), 1.0, 2.0)
    one_sided = paired_speedup([1.0] * 9 + [2.0], [1.0] * 10)  # P(median > 1) = P(5+ twos of 10 draws) < 2.5 %
    assert (one_sided.low, one_sided.high) == (1.0, 1.0)


def test_paired_speedup_cancels_drift_that_hits_whole_rounds():
    base = [1.0, 1.0, 3.0, 3.0, 1.0]  # rounds 3 and 4 ran on a loaded machine
    case = [0.5, 0.5, 1.5, 1.5, 0.5]
    assert paired_speedup(base, case).value == 2.0
    assert speedup(base, case).value == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_speedup([1.0, 2.0], [1.0])


def test_mann_whitney_method_is_chosen_explicitly_and_p_is_exact():
    # [1, 2, 3] against [4, 5, 6]: one ordering of C(6, 3) = 20 is this extreme each way
    exact = mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert exact.method == "exact" and exact.u == 0.0 and exact.p_value == pytest.approx(2 / 20)
    tied = mann_whitney_u([1, 1, 2, 2, 3, 3], [2, 3, 3, 4, 4, 4])
    assert tied.method == "asymptotic"
    large = mann_whitney_u(list(range(31)), [x + 0.5 for x in range(31)])
    assert large.method == "asymptotic"
    assert mann_whitney_u([1.0] * 5, [1.0] * 5).p_value == 1.0


def test_separated_samples_reach_the_smallest_possible_p():
    a, b = [2.0 + i * 0.01 for i in range(6)], [1.0 + i * 0.01 for i in range(6)]
    assert mann_whitney_u(a, b).p_value == pytest.approx(min_detectable_p(6, 6)) == pytest.approx(2 / math.comb(12, 6))
    assert min_detectable_p(3, 3) == pytest.approx(0.1)  # three runs each can never be significant at 0.01
