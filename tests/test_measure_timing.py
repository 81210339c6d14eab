"""The timer, proved by arithmetic: fake CUDA events, a virtual clock, and a synthetic model
whose blocks cost a known, fixed time run through the real runner."""

from __future__ import annotations

import textwrap

import pytest
import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.measure import timing
from dqar_bench.measure.records import RunDir
from dqar_bench.measure.timing import CallTimer
from dqar_bench.model import models
from dqar_bench.runs.runner import run_suite
from dqar_bench.views.table import results_frame
from tests import synthetic


class FakeCuda:
    """torch.cuda as the timer uses it: events stamped with a fake device clock (ms)."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []
        self.created = 0

    def synchronize(self, device=None):
        self.log.append("device sync")

    def current_stream(self, device=None):
        return f"stream of {device}"

    def Event(self, enable_timing=False):
        assert enable_timing
        self.created += 1
        return FakeEvent(self)


class FakeEvent:
    def __init__(self, cuda):
        self.cuda, self.stamp = cuda, None

    def record(self, stream=None):
        assert stream is not None, "events must be recorded on the model's stream, not whatever is current"
        self.stamp = self.cuda.now
        self.cuda.log.append("record")

    def synchronize(self):
        self.cuda.log.append("event sync")

    def elapsed_time(self, other):
        return other.stamp - self.stamp


class Stepper(torch.nn.Module):
    """Each forward 'takes' the next duration (ms) on the fake device clock."""

    def __init__(self, clock_advance):
        super().__init__()
        self.advance = clock_advance
        self.costs: list[float] = []

    def forward(self, x):
        self.advance(self.costs.pop(0))
        return x


def test_cuda_path_one_sync_after_the_call_and_per_step_events():
    cuda = FakeCuda()
    model = Stepper(lambda ms: setattr(cuda, "now", cuda.now + ms))
    timer = CallTimer(torch.device("cuda", 1), model, cuda=cuda)

    def sampling_call(costs, preamble=2.0):
        cuda.now += preamble  # set-up before the first model call
        model.costs = list(costs)
        syncs_before = cuda.log.count("event sync") + cuda.log.count("device sync")
        for _ in costs:
            model(torch.zeros(1))
            assert cuda.log.count("event sync") + cuda.log.count("device sync") == syncs_before  # nothing waits inside
        cuda.now += 1.0  # the last scheduler update
        return "latents"

    with timer:
        first, out = timer.time(lambda: sampling_call([10.0, 20.0, 30.0]))
        created = cuda.created
        second, _ = timer.time(lambda: sampling_call([5.0, 5.0]))
    assert out == "latents"
    assert first.seconds == pytest.approx(0.063) and second.seconds == pytest.approx(0.013)
    assert first.steps == pytest.approx([0.010, 0.020, 0.031])  # the first step is timed; the last runs to the end
    assert second.steps == pytest.approx([0.005, 0.006])  # marks reset on every call
    assert cuda.created == created + 2  # only the call's start/stop events are new: step events are reused
    # per call: a sync before (outside the timed region), then exactly one after it
    assert cuda.log.count("device sync") == 2 and cuda.log.count("event sync") == 2
    model.costs = [1.0]
    model(torch.zeros(1))  # after the timer: the hook is gone
    assert cuda.log.count("record") == 5 + 4  # start, 3 steps, stop; start, 2 steps, stop; none after


def test_cpu_path_uses_the_clock_at_the_same_points(monkeypatch):
    clock = synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", clock)
    model = Stepper(clock.advance)
    with CallTimer(torch.device("cpu"), model) as timer:
        model.costs = [0.004, 0.002]

        def call():
            clock.advance(0.001)
            model(torch.zeros(1))
            model(torch.zeros(1))
            clock.advance(0.0005)

        t, _ = timer.time(call)
    assert timer.method == "perf_counter"
    assert t.seconds == pytest.approx(0.0075)
    assert t.steps == pytest.approx([0.004, 0.0025])


SUITE = """
name: fixed-cost
model: {model}
sampler: {{name: ddim, steps: {steps}, guidance_scale: 4.0}}
class_labels: [1, 2]
seeds: [0, 1]
device: cpu
timing: {{warmup: 1, repeats: 3}}
cases:
  - name: baseline
  - name: every2
    gate: {{name: interval, every: 2}}
  - name: every3
    gate: {{name: interval, every: 3}}
"""

STEPS, BLOCKS, ATTN, MLP = 6, 2, 0.02, 0.005


def run_fixed_cost(tmp_path, monkeypatch, registry, name="run", clock=None, **model_kwargs):
    monkeypatch.setitem(models.BUILTIN_MODELS, "fixed-cost", lambda: synthetic.build(blocks=BLOCKS, attention_s=ATTN, mlp_s=MLP, clock=clock, **model_kwargs))
    path = tmp_path / "fixed-cost.yaml"
    path.write_text(textwrap.dedent(SUITE.format(model="fixed-cost", steps=STEPS)))
    return run_suite(load_suite(path, registry), tmp_path / name, registry=registry, progress=lambda line: None)


def test_synthetic_model_proves_timer_and_speedup_arithmetic(tmp_path, monkeypatch, registry):
    clock = synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", clock)
    run = run_fixed_cost(tmp_path, monkeypatch, registry, clock=clock)
    records = {r.case: r for r in RunDir(run.path).records()}
    frame = results_frame(list(records.values()), "baseline").set_index("case")
    for case, every in (("baseline", 1), ("every2", 2), ("every3", 3)):
        expected = synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP, every)
        record = records[case]
        assert len(record.latency_s) == 6 and len(record.warmup_s) == 1  # warmup kept apart
        assert record.median_s == pytest.approx(expected, rel=0.02)
        assert record.cold_s == pytest.approx(expected, rel=0.02)
        assert frame.loc[case, "per_image_ms"] == pytest.approx(expected * 1000 / 2, rel=0.02)
        expected_speedup = synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP) / expected
        assert frame.loc[case, "speedup"] == pytest.approx(expected_speedup, rel=0.02)
        assert frame.loc[case, "speedup_low"] <= frame.loc[case, "speedup"] <= frame.loc[case, "speedup_high"]
        steps = record.step_s[0]
        assert len(steps) == STEPS
        # steps that compute attention cost B * (attn + mlp), the others B * mlp; step 0 included
        want = [BLOCKS * ((ATTN if i % every == 0 else 0.0) + MLP) for i in range(STEPS)]
        assert steps == pytest.approx(want, rel=0.02)
    assert records["every2"].timer == "perf_counter"


def test_cold_is_the_first_call_of_a_case(tmp_path, monkeypatch, registry):
    """The model's very first forward costs 1 s more (a lazy initialisation): that lands in the
    first warmup call of the first case only, and `cold_s` is exactly that call."""
    clock = synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", clock)
    first = []

    def initialise_once(module, args):
        if not first:
            first.append(True)
            clock.advance(1.0)

    def build():
        loaded = synthetic.build(blocks=BLOCKS, attention_s=ATTN, mlp_s=MLP, clock=clock)
        loaded.transformer.register_forward_pre_hook(initialise_once)
        return loaded

    monkeypatch.setitem(models.BUILTIN_MODELS, "fixed-cost", build)
    path = tmp_path / "cold.yaml"
    path.write_text(textwrap.dedent(SUITE.format(model="fixed-cost", steps=STEPS)).replace("warmup: 1", "warmup: 2"))
    run = run_suite(load_suite(path, registry), tmp_path / "run", registry=registry, progress=lambda line: None)
    records = {r.case: r for r in RunDir(run.path).records()}
    call = synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP)
    baseline = records["baseline"]
    assert baseline.cold_s == baseline.warmup_s[0] == pytest.approx(call + 1.0)
    assert baseline.warmup_s[1] == pytest.approx(call) and baseline.median_s == pytest.approx(call)
    every2 = records["every2"]
    assert every2.cold_s == every2.warmup_s[0] == pytest.approx(synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP, 2))


@pytest.mark.slow
def test_real_clock_times_at_least_the_known_cost(tmp_path, monkeypatch, registry):
    """With real sleeps the figure can only exceed the known cost (by the sampler's own work);
    how close it comes is a speed figure, printed by benchmarks/harness_overhead.py."""
    run = run_fixed_cost(tmp_path, monkeypatch, registry)
    records = {r.case: r for r in RunDir(run.path).records()}
    for case, every in (("baseline", 1), ("every2", 2), ("every3", 3)):
        expected = synthetic.expected_call_s(STEPS, BLOCKS, ATTN, MLP, every)
        assert min(records[case].latency_s) >= expected * 0.999
        first, second = records[case].step_s[0][:2]
        assert first >= BLOCKS * (ATTN + MLP) * 0.999
        if every > 1:
            assert first > second  # the reuse step skipped its attention
