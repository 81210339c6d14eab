"""Numbers from raw samples, and how far to trust them.

A `Measurement` (after `torch.utils.benchmark.Measurement`) summarises the timed samples of
one case and says when their spread makes the median untrustworthy. A `Speedup` carries an
interval computed from both cases' raw samples, so "1.08x" never appears without the noise
it sits in; with per-round times (the baseline and the case timed in the same rounds) the
speedup is the median of the per-round ratios (`paired_speedup`). `mann_whitney_u` is the test
`compare` uses to decide whether a change is real (as asv does). Both go through scipy, with
the method chosen explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

NOISY = 0.10
"""IQR / median above this: the case is flagged noisy."""
UNRELIABLE = 0.25
"""IQR / median above this: the case is flagged unreliable."""


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default), so p50 of an even-sized set is the mean of the middle two."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Measurement:
    """Raw samples of one quantity (seconds per call, say) and their summary."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Measurement":
        if not samples:
            raise ValueError("a measurement needs at least one sample")
        return cls(tuple(float(s) for s in samples))

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def mean(self) -> float:
        return sum(self.samples) / self.n

    @property
    def p10(self) -> float:
        return percentile(self.samples, 10)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    @property
    def iqr(self) -> float:
        return percentile(self.samples, 75) - percentile(self.samples, 25)

    @property
    def relative_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    @property
    def noise(self) -> str:
        """'ok', 'noisy' (IQR/median > 10 %) or 'unreliable' (> 25 %); one sample has no
        spread to judge, so it is 'single sample'."""
        if self.n < 2:
            return "single sample"
        if self.relative_iqr > UNRELIABLE:
            return "unreliable"
        if self.relative_iqr > NOISY:
            return "noisy"
        return "ok"

    def scaled(self, factor: float) -> "Measurement":
        """The same samples times `factor` (per call -> per image, seconds -> ms)."""
        return Measurement(tuple(s * factor for s in self.samples))

    def summary(self) -> dict[str, Any]:
        """What a record keeps beside the raw samples."""
        return {
            "n": self.n,
            "median": self.median,
            "mean": self.mean,
            "p10": self.p10,
            "p90": self.p90,
            "iqr": self.iqr,
            "relative_iqr": self.relative_iqr if self.n > 1 else None,
            "noise": self.noise,
        }


RESAMPLES, CONFIDENCE, BOOTSTRAP_SEED = 2000, 0.95, 0
"""The speedup intervals' bootstrap: the method notes below are written from these, so a
table never states other settings than it was computed with."""
_BOOTSTRAP = f"{CONFIDENCE:.0%} interval: percentile bootstrap (scipy.stats.bootstrap), {RESAMPLES} resamples"
SPEEDUP_METHOD = f"ratio of medians; {_BOOTSTRAP} of each case's raw samples"
PAIRED_SPEEDUP_METHOD = f"median of per-round ratios; {_BOOTSTRAP} of the ratios"
EXACT_MAX_SAMPLES = 30
"""Mann-Whitney U is computed exactly (the null distribution counted out) up to this many
samples a side when there are no ties; otherwise with the normal approximation."""


@dataclass(frozen=True)
class Speedup:
    """baseline median / case median, with an interval from resampling both."""

    value: float
    low: float | None
    high: float | None
    method: str = SPEEDUP_METHOD

    def label(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:.2f}x"
        return f"{self.value:.2f}x [{self.low:.2f}, {self.high:.2f}]"


def speedup(
    baseline: Sequence[float],
    case: Sequence[float],
) -> Speedup:
    """Speedup of `case` over `baseline` from raw per-call times.

    The point value is the ratio of medians. The interval is scipy's percentile bootstrap:
    each case's samples are resampled independently (with replacement, a fixed seed so a
    table is reproducible) and the ratio of medians recomputed. With fewer than two samples
    on a side there is no spread to resample, and no interval is claimed.
    """
    base = np.asarray(baseline, dtype=np.float64)
    new = np.asarray(case, dtype=np.float64)
    if base.size == 0 or new.size == 0:
        raise ValueError("speedup needs samples on both sides")
    value = float(np.median(base) / np.median(new))
    if base.size < 2 or new.size < 2:
        return Speedup(value, None, None)

    def ratio_of_medians(b: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(b, axis=axis) / np.median(n, axis=axis)

    low, high = _percentile_bootstrap((base, new), ratio_of_medians)
    return Speedup(value, low, high)


def paired_speedup(
    baseline_rounds: Sequence[float],
    case_rounds: Sequence[float],
) -> Speedup:
    """Speedup from rounds in which the baseline and the case both ran: the median of the
    per-round ratios baseline / case, so drift that hits a whole round cancels out."""
    ratios = round_ratios(baseline_rounds, case_rounds)
    value = float(np.median(ratios))
    if ratios.size < 2:
        return Speedup(value, None, None, PAIRED_SPEEDUP_METHOD)

    def median(r: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(r, axis=axis)

    low, high = _percentile_bootstrap((ratios,), median)
    return Speedup(value, low, high, PAIRED_SPEEDUP_METHOD)


def round_ratios(baseline_rounds: Sequence[float], case_rounds: Sequence[float]) -> np.ndarray:
    """baseline / case, round by round."""
    base = np.asarray(baseline_rounds, dtype=np.float64)
    new = np.asarray(case_rounds, dtype=np.float64)
    if base.shape != new.shape or base.size == 0:
        raise ValueError(f"per-round ratios need the same number of rounds on both sides, got {base.size} and {new.size}")
    return base / new


def _percentile_bootstrap(data: tuple[np.ndarray, ...], statistic: Any) -> tuple[float | None, float | None]:
    """scipy's percentile bootstrap (each sample resampled on its own); no interval when
    every resample gives the same value (scipy then has nothing to spread)."""
    result = stats.bootstrap(
        data, statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
        vectorized=True, paired=False, rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None, None
    return low, high


@dataclass(frozen=True)
class MannWhitney:
    u: float
    p_value: float
    method: str


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of `a` against `b` (`scipy.stats.mannwhitneyu`).

    The method is chosen here, not left to scipy's "auto": exact when there are no ties
    and both sides have at most `EXACT_MAX_SAMPLES`, else the normal approximation with
    tie and continuity corrections ("asymptotic"). U is the statistic of `a`: large when
    `a` tends to be larger.
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError("Mann-Whitney U needs samples on both sides")
    joined = np.concatenate([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])
    ties = np.unique(joined).size < joined.size
    method = "exact" if not ties and max(len(a), len(b)) <= EXACT_MAX_SAMPLES else "asymptotic"
    if np.ptp(joined) == 0.0:  # all equal: no evidence of any difference (scipy would give NaN)
        return MannWhitney(len(a) * len(b) / 2.0, 1.0, method)
    result = stats.mannwhitneyu(a, b, alternative="two-sided", method=method)
    return MannWhitney(float(result.statistic), float(result.pvalue), method)


def min_detectable_p(n1: int, n2: int) -> float:
    """The smallest two-sided p the exact test can give with these sample counts: below
    what `compare` asks for, no slowdown can ever be called significant."""
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))
