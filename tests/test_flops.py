"""Exact FLOPs: what a strategy removes is exactly the FLOPs of the calls it skipped."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from dqar_bench.config.suite import load_suite
from dqar_bench.measure.flops import FlopCount, count_flops, summarize
from dqar_bench.measure.records import RunDir
from dqar_bench.runs.runner import run_suite
from dqar_bench.strategy import signals
from dqar_bench.strategy.attention import project_qkv
from tests.conftest import SMALL_SUITE_HEAD
from tests.parts_for_tests import registry_with_test_parts

STEPS = 6


def test_cpu_attention_kernel_is_counted():
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    _, counted = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert counted.total == sdpa_flop_count(q.shape, k.shape, v.shape) > 0  # torch's table alone would say 0
    assert list(counted.by_op) == ["aten._scaled_dot_product_flash_attention_for_cpu"]


def test_summary_is_exact_where_seeds_agree_and_the_mean_where_not():
    same = summarize({0: FlopCount(10, {"aten.mm": 10}), 1: FlopCount(10, {"aten.mm": 10})})
    assert same == {"per_call": 10, "per_seed": {"0": 10, "1": 10}, "by_op": {"aten.mm": 10}}
    assert isinstance(same["per_call"], int)
    differ = summarize({0: FlopCount(10, {"aten.mm": 10}), 1: FlopCount(14, {"aten.mm": 10, "aten.bmm": 4})})
    assert differ["per_call"] == 12 and differ["by_op"] == {"aten.bmm": 2, "aten.mm": 10}


@pytest.fixture(scope="module")
def flop_run(tmp_path_factory):
    suite_text = SMALL_SUITE_HEAD + """\
cases:
  - name: baseline
  - name: never
    gate: never
  - name: iv
    gate: {name: interval, every: 2}
  - name: probed
    gate: {name: entropy, threshold: 1.0e-9}
"""
    tmp = tmp_path_factory.mktemp("flops")
    path = tmp / "suite.yaml"
    path.write_text(suite_text)
    registry = registry_with_test_parts()
    run = run_suite(load_suite(path, registry), tmp / "run", registry=registry, progress=lambda line: None)
    return {r.case: r for r in RunDir(run.path).records()}, run.path


def cfg_hidden(tiny):
    """The input of a block's self-attention in one model call: [2 x labels (CFG), tokens, width]."""
    block = tiny.transformer.transformer_blocks[0]
    tokens = (tiny.sample_size // tiny.transformer.config.patch_size) ** 2
    return block, torch.randn(4, tokens, block.attn1.to_q.in_features)


def test_interval_removes_exactly_the_flops_of_the_reused_attention_calls(flop_run, tiny):
    records, _ = flop_run
    block, hidden = cfg_hidden(tiny)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block.attn1(hidden)
    attention = counter.get_total_flops()
    assert attention > 0
    base, iv = records["baseline"].flops["per_call"], records["iv"].flops["per_call"]
    assert records["iv"].reused == 3 * 4  # odd steps of 6, every block
    assert base - iv == records["iv"].reused * attention
    assert records["never"].flops["per_call"] == base  # computes everything, through the harness


def test_entropy_probe_adds_exactly_its_own_flops(flop_run, tiny):
    records, _ = flop_run
    probed = records["probed"]
    assert probed.reused == 0  # a threshold nothing is below: it only probes
    block, hidden = cfg_hidden(tiny)
    with torch.no_grad():
        q, k, _ = project_qkv(block.attn1, hidden)
        _, one_probe = count_flops(lambda: signals.sampled_scores(q, k, 16))
    probes = (STEPS - 1) * 4  # every block, on every step but the last (the next may reuse)
    extra = probed.flops["per_call"] - records["baseline"].flops["per_call"]
    assert one_probe.total > 0 and extra == probes * one_probe.total
    assert probed.flops["by_op"]["aten.bmm"] == probes * one_probe.total  # the probe's matmul is seen as bmm


def test_flops_are_in_the_record_table_and_csv(flop_run):
    records, path = flop_run
    flops = records["iv"].flops
    assert set(flops) == {"per_call", "per_seed", "by_op"} and flops["per_seed"] == {"0": flops["per_call"]}
    assert sum(flops["by_op"].values()) == flops["per_call"]
    csv = pd.read_csv(path / "results.csv").set_index("case")
    base = records["baseline"].flops["per_call"]
    assert csv.loc["iv", "tflop_per_call"] == pytest.approx(flops["per_call"] / 1e12)
    assert csv.loc["iv", "flop_speedup"] == pytest.approx(base / flops["per_call"])
    assert csv.loc["never", "flop_speedup"] == 1.0
    table = (path / "table.md").read_text()
    assert "| TFLOP / call | FLOP speedup |" in table
    assert f"{base / flops['per_call']:.2f}x" in table
