"""Interleaved timing: rounds, paired speedups, drift, injected slowdowns, resume of rounds."""

from __future__ import annotations

import math
import textwrap
import threading

import numpy as np
import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.measure import timing
from dqar_bench.measure.records import RunDir
from dqar_bench.measure.rounds import RoundLog, pair, round_order
from dqar_bench.measure.stats import paired_speedup
from dqar_bench.model import models
from dqar_bench.runs.runner import run_suite
from dqar_bench.views.table import render_markdown, results_frame
from tests import parts_for_tests, synthetic
from tests.parts_for_tests import registry_with_test_parts

STEPS, BLOCKS, ATTN, MLP = 6, 2, 0.02, 0.005

FIXED = """\
name: fixed-cost
model: fixed-cost
sampler: {{name: ddim, steps: {steps}, guidance_scale: 4.0}}
class_labels: [1, 2]
seeds: [0, 1]
device: cpu
timing: {{warmup: 1, repeats: {repeats}, order: {order}}}
cases:
  - name: baseline
  - name: every2
    gate: {{name: interval, every: 2}}
  - name: every3
    gate: {{name: interval, every: 3}}
{extra}"""


def fixed_cost_run(tmp_path, monkeypatch, order="interleaved", repeats=4, drift_after=None, extra="", name="run"):
    """A run on the synthetic model with a virtual clock; `drift_after` rounds in, the
    machine gets twice as slow (every cost doubles), as when a neighbour's job starts."""
    clock = synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", clock)
    monkeypatch.setitem(parts_for_tests.SPEND, "wait", clock.advance)
    model = synthetic.build(blocks=BLOCKS, attention_s=ATTN, mlp_s=MLP, clock=clock)
    monkeypatch.setitem(models.BUILTIN_MODELS, "fixed-cost", lambda: model)
    appended = []
    real_append = RoundLog.append

    def append(self, entry):
        real_append(self, entry)
        appended.append(entry)
        if drift_after is not None and len(appended) == drift_after:
            model.transformer.scale = 2.0

    monkeypatch.setattr(RoundLog, "append", append)
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(FIXED.format(steps=STEPS, repeats=repeats, order=order, extra=extra)))
    registry = registry_with_test_parts()
    run = run_suite(load_suite(path, registry), tmp_path / name, registry=registry, progress=lambda line: None)
    records = {r.case: r for r in RunDir(run.path).records()}
    return records, results_frame(list(records.values()), "baseline").set_index("case"), appended


def expected_speedup(every):
    return synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP) / synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP, every)


@pytest.mark.slow
def test_drift_halfway_hits_every_case_alike_when_rounds_interleave(tmp_path, monkeypatch):
    records, frame, rounds = fixed_cost_run(tmp_path, monkeypatch, drift_after=2)
    assert len(rounds) == 4 and all(set(e["order"]) == {"baseline", "every2", "every3"} for e in rounds)
    for case, every in (("every2", 2), ("every3", 3)):
        record = records[case]
        # the raw times moved (the machine got twice as slow for the last two rounds) ...
        assert record.round_s[3] == pytest.approx(2 * record.round_s[0])
        # ... but every round's ratio against the baseline of that round did not
        assert frame.loc[case, "speedup"] == pytest.approx(expected_speedup(every))
        assert frame.loc[case, "speedup_low"] == pytest.approx(expected_speedup(every))
        assert record.timing_order == "interleaved" and record.rounds == 4 and len(record.latency_s) == 8
        assert record.baseline_round_s == records["baseline"].round_s
        assert record.latency_s[:2] == pytest.approx([record.round_s[0] / 2] * 2)  # round-major, then seed
    # blocked, the same drift lands on the later cases only, and their speedup is wrong
    _, blocked, _ = fixed_cost_run(tmp_path, monkeypatch, order="blocked", drift_after=6, name="blocked")
    assert blocked.loc["every3", "speedup"] < 0.6 * expected_speedup(3)
    assert "(blocked)" in render_markdown(blocked.reset_index())


@pytest.mark.slow
def test_injected_slowdown_lowers_the_paired_speedup_by_exactly_its_cost(tmp_path, monkeypatch):
    extra = "  - name: never\n    gate: never\n  - name: slowed\n    gate: {name: spin, seconds: 0.05}\n"
    records, frame, _ = fixed_cost_run(tmp_path, monkeypatch, repeats=3, extra=extra)
    base = synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP)
    assert frame.loc["never", "speedup"] == pytest.approx(1.0)
    assert frame.loc["slowed", "speedup"] == pytest.approx(base / (base + 0.05))
    assert records["slowed"].round_s == pytest.approx([2 * (base + 0.05)] * 3)


@pytest.mark.slow
def test_rounds_are_logged_in_a_seeded_order_and_recorded(tmp_path, monkeypatch):
    twin = "  - name: every2-twin\n    gate: {name: interval, every: 2}\n"  # the same content under another name
    records, frame, rounds = fixed_cost_run(tmp_path, monkeypatch, repeats=6, extra=twin)
    log = RoundLog(tmp_path / "run" / "rounds.jsonl").entries()
    assert [e["round"] for e in log] == list(range(6))
    assert [e["order"] for e in log] == [round_order(["baseline", "every2", "every3", "every2-twin"], 0, r) for r in range(6)]
    assert records["every2"].case_key == records["every2-twin"].case_key
    assert frame.loc["every2-twin", "speedup"] == pytest.approx(frame.loc["every2", "speedup"]) == pytest.approx(expected_speedup(2))
    assert len({tuple(e["order"]) for e in log}) > 1  # shuffled, not one fixed order
    assert all({name: t["case_key"] for name, t in e["cases"].items()} == {n: r.case_key for n, r in records.items()} for e in log)
    assert all(r.round_seed == 0 and r.round_ids == list(range(6)) for r in records.values())
    assert round_order(list("abcdef"), 7, 3) == round_order(list("abcdef"), 7, 3) != round_order(list("abcdef"), 8, 3)


def test_pairing_rules():
    def entry(r, session, **cases):
        return {"round": r, "session": session, "cases": {k: {"case_key": f"key-{k}", "calls_s": v, "steps_s": None} for k, v in cases.items()}}

    x, b = ("x", "key-x"), ("b", "key-b")
    entries = [entry(0, "s", b=[2.0, 2.0], x=[1.0, 1.0]), entry(1, "s", b=[4.0, 4.0], x=[1.0, 3.0]), entry(2, "t", x=[5.0, 5.0])]
    paired = pair(entries, [0, 1], x, b)
    assert paired.round_s == [2.0, 4.0] and paired.baseline_round_s == [4.0, 8.0] and paired.latency_s == [1.0, 1.0, 1.0, 3.0]
    assert pair(entries, [0, 1, 2], x, b).baseline_round_s == [4.0, 8.0, 4.0]  # blocked: by position
    assert pair(entries, [2], x, None).baseline_round_s is None
    assert pair(entries, [0, 1], ("x", "an edited x"), b).round_s == []  # another definition's rounds never count
    # the paired speedup is the median ratio; its interval a bootstrap over the ratios
    s = paired_speedup([1.0, 1.1, 1.3, 2.0, 1.2], [0.5, 0.5, 0.6, 1.0, 0.6])
    ratios = np.array([2.0, 2.2, 1.3 / 0.6, 2.0, 2.0])
    assert s.value == pytest.approx(np.median(ratios)) and s.low <= s.value <= s.high
    assert s.low >= ratios.min() and s.high <= ratios.max() and s.high > s.low
    assert paired_speedup([1.0], [0.5]).low is None
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])


@pytest.mark.slow
def test_a_crash_loses_only_the_round_in_flight_and_resume_pairs_new_rounds(tmp_path, monkeypatch):
    from dqar_bench.runs import case_run

    real = case_run.CaseRun.time_round
    calls = []

    def crashing(self):
        calls.append(self.case.name)
        if len(calls) == 7:  # in the third round
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(case_run.CaseRun, "time_round", crashing)
    with pytest.raises(KeyboardInterrupt):
        fixed_cost_run(tmp_path, monkeypatch, repeats=4)
    out = tmp_path / "run"
    assert len(RoundLog(out / "rounds.jsonl").entries()) == 2 and not RunDir(out).records()
    monkeypatch.setattr(case_run.CaseRun, "time_round", real)
    suite = load_suite(tmp_path / "run.yaml", registry_with_test_parts())
    run_suite(suite, out, resume=True, registry=registry_with_test_parts(), progress=lambda line: None)
    records = {r.case: r for r in RunDir(out).records()}
    log = {e["round"]: e for e in RoundLog(out / "rounds.jsonl").entries()}
    assert sorted(log) == [0, 1, 2, 3]
    base_key = records["baseline"].case_key
    for record in records.values():
        assert record.status == "ok" and record.round_ids == [0, 1, 2, 3]
        for r in record.round_ids:
            assert log[r]["cases"]["baseline"]["case_key"] == base_key and log[r]["cases"][record.case]["case_key"] == record.case_key
        assert len({log[r]["session"] for r in record.round_ids}) == 2  # two sessions, each paired within itself


@pytest.mark.slow
def test_model_is_bit_identical_after_interleaved_install_and_removal(write_suite, tmp_path, monkeypatch, tiny):
    from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler

    monkeypatch.setitem(models.BUILTIN_MODELS, "dit-tiny", lambda: tiny)
    condition = labels_condition([1, 2], tiny.null_class, torch.device("cpu"))
    before = denoise(tiny.transformer, make_scheduler("ddim", tiny.scheduler_config), condition, 0, 6, 4.0)
    state = {k: v.clone() for k, v in tiny.transformer.state_dict().items()}
    path = write_suite("""\
name: cycle
model: dit-tiny
sampler: {name: ddim, steps: 6, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 3}
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
  - name: fora
    gate: {name: interval, every: 3}
    cache: attention-mlp-output
  - name: kv
    gate: {name: interval, every: 2}
    cache: kv
    quantizer: int8
""")
    registry = registry_with_test_parts()
    run_suite(load_suite(path, registry), tmp_path / "run", registry=registry, progress=lambda line: None)
    after = denoise(tiny.transformer, make_scheduler("ddim", tiny.scheduler_config), condition, 0, 6, 4.0)
    assert torch.equal(before, after)
    assert all(torch.equal(state[k], v) for k, v in tiny.transformer.state_dict().items())
    assert not any("forward" in m.__dict__ for m in tiny.transformer.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny.transformer.modules())
    records = RunDir(tmp_path / "run").records()
    assert all(r.status == "ok" and r.rounds == 3 for r in records)


@pytest.mark.slow
def test_busy_neighbour_halfway_moves_raw_times_not_paired_speedups(write_suite, tmp_path, monkeypatch):
    """Two runs of one suite; in the second a thread busy with torch work starts after half
    the rounds. Raw times shift under it; the paired speedup stays close to the first run's."""
    body = """\
name: busy
model: dit-tiny
sampler: {name: ddim, steps: 4, guidance_scale: 4.0}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {warmup: 1, repeats: 8}
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
"""
    registry = registry_with_test_parts()
    suite = load_suite(write_suite(body), registry)
    quiet = run_suite(suite, tmp_path / "quiet", registry=registry, progress=lambda line: None)
    stop = threading.Event()

    def busy():
        x = torch.randn(64, 64)
        while not stop.is_set():
            x = torch.tanh(x @ x)

    thread = threading.Thread(target=busy, daemon=True)
    real_append = RoundLog.append

    def append(self, entry):
        real_append(self, entry)
        if entry["round"] == 3:
            thread.start()

    monkeypatch.setattr(RoundLog, "append", append)
    try:
        loaded = run_suite(suite, tmp_path / "loaded", registry=registry, progress=lambda line: None)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
    before, after = ({r.case: r for r in RunDir(run.path).records()} for run in (quiet, loaded))
    a = results_frame(list(before.values()), "baseline").set_index("case").loc["iv", "speedup"]
    b = results_frame(list(after.values()), "baseline").set_index("case").loc["iv", "speedup"]
    rounds = after["baseline"].round_s
    shift = np.median(rounds[4:]) / np.median(rounds[:4])
    print(f"raw baseline round time under load: x{shift:.2f}; paired speedup {a:.3f} quiet, {b:.3f} loaded")
    assert abs(math.log(b / a)) < math.log(1.5)  # loose: this machine may be busy besides the thread
    from dqar_bench.views.compare import compare_runs

    verdict = compare_runs(quiet.path, loaded.path)
    assert verdict.exit_status in (0, 3), [c.regressions for c in verdict.changes]  # clean or inconclusive, never a regression


@pytest.mark.slow
def test_strong_modes_are_timed_blocked_and_say_so(write_suite, tmp_path, monkeypatch):
    from tests.conftest import SMALL_SUITE_HEAD

    monkeypatch.setattr(torch, "compile", lambda model, **options: model)  # the runner's path, without Dynamo's minutes

    body = SMALL_SUITE_HEAD.replace("repeats: 1", "repeats: 2") + """\
execution: [eager, compile]
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
"""
    registry = registry_with_test_parts()
    run = run_suite(load_suite(write_suite(body), registry), tmp_path / "run", registry=registry, progress=lambda line: None)
    records = RunDir(run.path).latest()
    log = RoundLog(run.path / "rounds.jsonl").entries()
    compiled, eager = records["iv@compile"], records["iv@eager"]
    assert compiled.timing_order == "blocked" and "compile mode keeps its compiled programs alive" in compiled.timing_note
    assert eager.timing_order == "interleaved" and eager.timing_note is None
    assert all(len(log_entry["cases"]) == 1 for log_entry in log if log_entry["timing_order"] == "blocked")
    assert [e["order"] for e in log if e["timing_order"] == "interleaved"][0] in (["baseline@eager", "iv@eager"], ["iv@eager", "baseline@eager"])
    assert compiled.flops == eager.flops  # counted on an eager call with the strategy installed, in either mode
    assert compiled.baseline_round_s == records["baseline@compile"].round_s  # paired by position
    assert compiled.quality["psnr_db"] == pytest.approx(eager.quality["psnr_db"], rel=1e-4)
    table = (run.path / "table.md").read_text()
    assert "(blocked)" in table.split("| iv@compile |")[1].split("\n")[0]
