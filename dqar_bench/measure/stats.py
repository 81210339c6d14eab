"""Numbers from raw samples, and how far to trust them.

A `Measurement` (after `torch.utils.benchmark.Measurement`) summarises the timed samples of
one case and says when their spread makes the median untrustworthy. A `Speedup` carries an
interval computed from both cases' raw samples, so "1.08x" never appears without the noise
it sits in. `mann_whitney_u` is the test `compare` uses to decide whether a slowdown is real
(as asv does); it is written out here (exact distribution for small samples without ties,
normal approximation otherwise) so the harness needs no scipy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

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


SPEEDUP_METHOD = "ratio of medians; 95% interval: percentile bootstrap, 2000 resamples of each case's raw samples"


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
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Speedup:
    """Speedup of `case` over `baseline` from raw per-call times.

    The point value is the ratio of medians. The interval is a percentile bootstrap: each
    case's samples are resampled independently (with replacement, a fixed seed so a table
    is reproducible) and the ratio of medians recomputed. With fewer than two samples on a
    side there is no spread to resample, and no interval is claimed.
    """
    base = np.asarray(baseline, dtype=np.float64)
    new = np.asarray(case, dtype=np.float64)
    if base.size == 0 or new.size == 0:
        raise ValueError("speedup needs samples on both sides")
    value = float(np.median(base) / np.median(new))
    if base.size < 2 or new.size < 2:
        return Speedup(value, None, None)
    rng = np.random.default_rng(seed)
    base_medians = np.median(base[rng.integers(0, base.size, (resamples, base.size))], axis=1)
    new_medians = np.median(new[rng.integers(0, new.size, (resamples, new.size))], axis=1)
    ratios = base_medians / new_medians
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return Speedup(value, float(low), float(high))


@dataclass(frozen=True)
class MannWhitney:
    u: float
    p_value: float
    method: str


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of `a` against `b`.

    Exact (the null distribution counted out) when there are no ties and both sides have
    at most 30 samples; otherwise the normal approximation with tie and continuity
    corrections. Matches `scipy.stats.mannwhitneyu(a, b, method=...)`. U is the statistic
    of `a`: large when `a` tends to be larger.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("Mann-Whitney U needs samples on both sides")
    ranks, tie_sizes = _ranks(list(a) + list(b))
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2.0
    if not any(t > 1 for t in tie_sizes) and max(n1, n2) <= 30:
        counts = _u_counts(n1, n2)
        total = sum(counts)
        k = int(round(max(u, n1 * n2 - u)))
        upper = sum(counts[k:]) / total  # P(U >= k) = P(U <= n1 n2 - k) by symmetry
        return MannWhitney(u, min(1.0, 2.0 * upper), "exact")
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = sum(t**3 - t for t in tie_sizes) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0.0:
        return MannWhitney(u, 1.0, "normal approximation")
    z = max(abs(u - mu) - 0.5, 0.0) / sigma
    return MannWhitney(u, min(1.0, math.erfc(z / math.sqrt(2.0))), "normal approximation")


def min_detectable_p(n1: int, n2: int) -> float:
    """The smallest two-sided p the exact test can give with these sample counts: below
    what `compare` asks for, no slowdown can ever be called significant."""
    return 2.0 / math.comb(n1 + n2, n1)


def _ranks(values: list[float]) -> tuple[list[float], list[int]]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    tie_sizes: list[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        tie_sizes.append(j - i + 1)
        i = j + 1
    return ranks, tie_sizes


@functools.lru_cache(maxsize=None)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m+n, m) orderings give each U = 0 .. m*n (no ties)."""
    if m == 0 or n == 0:
        return (1,)
    # The largest value is either in the first sample (it beats all n others: U shifts by n)
    # or in the second (it beats nobody from the first sample).
    with_first = _u_counts(m - 1, n)
    with_second = _u_counts(m, n - 1)
    counts = [0] * (m * n + 1)
    for u, c in enumerate(with_first):
        counts[u + n] += c
    for u, c in enumerate(with_second):
        counts[u] += c
    return tuple(counts)


PAIRED_SPEEDUP_METHOD = (
    "median of per-round ratios (baseline / case, timed in the same round); 95% interval: "
    "scipy.stats.bootstrap, percentile method, 9999 resamples of the ratios, fixed seed 0"
)


def paired_speedup(
    baseline_rounds: Sequence[float],
    case_rounds: Sequence[float],
    resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> Speedup:
    """Speedup of a case from rounds it ran in together with its baseline.

    Each round gives one ratio, baseline seconds / case seconds; drift between rounds
    moves both sides of a ratio alike and cancels. The value is the median ratio; the
    interval a percentile bootstrap over the ratios (`scipy.stats.bootstrap`, a fixed seed
    so a table is reproducible). One round has no spread: no interval is claimed. Rounds
    that all give the same ratio have none either: the interval is that ratio.
    """
    from scipy.stats import bootstrap

    base = np.asarray(baseline_rounds, dtype=np.float64)
    new = np.asarray(case_rounds, dtype=np.float64)
    if base.size == 0 or base.size != new.size:
        raise ValueError(f"paired speedup needs the same number (> 0) of rounds on both sides, got {base.size} and {new.size}")
    ratios = base / new
    value = float(np.median(ratios))
    if ratios.size < 2:
        return Speedup(value, None, None, PAIRED_SPEEDUP_METHOD)
    if np.all(ratios == ratios[0]):
        return Speedup(value, value, value, PAIRED_SPEEDUP_METHOD)
    result = bootstrap(
        (ratios,), np.median, n_resamples=resamples, confidence_level=confidence, method="percentile",
        vectorized=True, axis=-1, rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Speedup(value, float(interval.low), float(interval.high), PAIRED_SPEEDUP_METHOD)
