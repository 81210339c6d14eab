"""`cache-dit:` cases: the real cache-dit library through the runner, next to our DBCache.

Skipped without cache-dit (the optional extra `cache-dit`), except the one-line error that
names the extra, which is checked by hiding the module.
"""

from __future__ import annotations

import sys

import pytest

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError

HEAD = """\
name: cachedit
model: flux-tiny
sampler: {name: flow-euler, steps: 8, guidance_scale: 3.5}
prompt_lengths: [8]
seeds: [0]
device: cpu
dtype: float32
timing: {warmup: 0, repeats: 1}
baseline: baseline
cases:
  - name: baseline
"""


def test_a_cache_dit_case_runs_the_library_and_counts_reuse_as_our_dbcache(write_suite, tmp_path):
    pytest.importorskip("cache_dit")
    from dqar_bench.cli import main
    from dqar_bench.measure.records import RunDir

    path = write_suite(HEAD + """\
  - name: dbcache
    gate: {name: dbcache, fn: 2, bn: 1, threshold: 0.3, warmup: 0, max_continuous_cached_steps: 2}
    cache: block-residual
  - name: cache_dit
    cache-dit: {fn: 2, bn: 1, threshold: 0.3, warmup: 0, max_continuous_cached_steps: 2}
  - name: cache_dit_taylorseer
    cache-dit: {fn: 2, bn: 1, threshold: 0.3, warmup: 0, max_continuous_cached_steps: 2, taylorseer: 1}
""")
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    records = {r.case: r for r in RunDir(tmp_path / "run").records()}
    ours, theirs, seer = records["dbcache"], records["cache_dit"], records["cache_dit_taylorseer"]
    assert theirs.status == "ok" and seer.status == "ok", (theirs.error, seer.error)
    assert theirs.reused == ours.reused > 0 and theirs.reuse_map == ours.reuse_map
    base = records["baseline"].flops["per_call"]
    assert theirs.flops["per_call"] < base and seer.flops["per_call"] < base  # FLOPs measured as for every case
    assert "cache-dit(fn=2" in (tmp_path / "run" / "table.md").read_text()


def test_cache_dit_cases_without_the_library_name_the_extra(write_suite, registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import fails as if not installed
    path = write_suite(HEAD + "  - name: cd\n    cache-dit: {fn: 1}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(path, registry)
    message = str(err.value)
    assert "\n" not in message and "case 'cd'" in message and "optional extra cache-dit" in message


def test_bad_cache_dit_settings_fail_in_one_line(write_suite, registry):
    pytest.importorskip("cache_dit")
    path = write_suite(HEAD + "  - name: cd\n    cache-dit: {fn: 1, Fn: 2}\n")
    with pytest.raises(SuiteError, match=r"field 'cache-dit.Fn': unknown DBCache setting"):
        load_suite(path, registry)


def test_a_family_cache_dit_has_no_adapter_for_is_refused_in_one_line():
    pytest.importorskip("cache_dit")
    from dqar_bench.model import families
    from dqar_bench.strategy.cache_dit import CacheDitHook

    hook = CacheDitHook({"name": "cache-dit", "config": {"fn": 1}})
    assert hook.refusal(families.get("flux")) is None and hook.refusal(families.get("wan")) is None
    reason = hook.refusal(families.get("sd3"))
    assert "no adapter for SD3Transformer2DModel" in reason and "\n" not in reason
    assert "compiled" in hook.refusal(families.get("flux"), "compile")
