"""benchmarks/decision_overhead.py's decision share (target 4, which the GPU check calls): only
signal-reading cases, each timed region where it belongs, and the clocks of the device."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SMALL_SUITE_HEAD
from tests.test_gpu_check import load_check

CASES = """\
cases:
  - name: baseline
  - name: every
    gate: {name: interval, every: 2}
    cache: attention-output
  - name: entropy
    gate: {name: entropy, threshold: 0.9}
    cache: attention-output
  - name: snr
    gate: {name: snr, snr_low: 0.0001, snr_high: 1.0}
    cache: attention-output
"""


@pytest.fixture(scope="module")
def bench():
    """The script as the GPU check loads it."""
    return load_check()._load_benchmark("decision_overhead")


def test_the_share_covers_the_signal_reading_cases_on_the_cpu_s_process_time(bench, write_suite):
    suite = write_suite(SMALL_SUITE_HEAD + CASES)
    rows = {r["case"]: r for r in bench.decision_share(suite, 1, "cpu")}
    assert set(rows) == {"entropy", "snr"}  # the interval gate reads no signal; the baseline has no gate
    for r in rows.values():
        assert r["clock"] == "cpu" and r["sampling_ms"] > 0 and r["gate_ms"] > 0
        assert r["share"] == pytest.approx((r["probe_ms"] + r["gate_ms"]) / r["sampling_ms"])
        assert 0 < r["share"] < 1
    assert rows["entropy"]["probe_ms"] > 0  # the entropy gate probes attention inside computing blocks
    assert rows["snr"]["probe_ms"] == 0  # the SNR gate reads the schedule: no probe


def test_the_clocks_follow_the_device(bench):
    assert set(bench.clocks(torch.device("cpu"))) == {"wall", "cpu"}
    assert set(bench.clocks(torch.device("cuda"))) == {"wall"}  # the host's CPU time on a GPU is time spent waiting
