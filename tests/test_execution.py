"""Execution modes: suite expansion, same-mode baselines, compile, and the CUDA-graph bookkeeping.

CUDA graphs cannot run here; their per-key bookkeeping is tested with a fake backend, and
the graph-safety of caches (writes in place, bookkeeping outside the forward) directly.
"""

from __future__ import annotations

import json

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.parts import build_part
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import RunDir
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.execution import Execution, ExecutionOptions, KeyedRunner, _copy, unsupported
from dqar_bench.strategy.storage import Slots
from dqar_bench.strategy.strategy import Strategy
from dqar_bench.testing import ReplayedGraphs
from dqar_bench.views.table import render_markdown, results_frame
from tests.conftest import SMALL_SUITE_HEAD


def strategy(registry, gate, cache, scheduler="all", quantizer="none"):
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", scheduler), part("gate", gate), part("cache", cache), part("quantizer", quantizer))


def test_cases_expand_per_mode_and_the_baseline_runs_in_each(write_suite, registry):
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + """\
execution: [eager, compile]
cases:
  - name: baseline
  - name: fora
    gate: {name: interval, every: 3}
    cache: attention-mlp-output
  - name: graphed
    execution: cudagraph
    gate: {name: interval, every: 2}
"""), registry)
    names = [c.name for c in suite.cases]
    assert names == ["baseline@eager", "baseline@compile", "baseline@cudagraph", "fora@eager", "fora@compile", "graphed@cudagraph"]
    assert [c.name for c in suite.ordered_cases()][:3] == ["baseline@eager", "baseline@compile", "baseline@cudagraph"]
    assert suite.baseline_for(suite.case("fora@compile")) == "baseline@compile"
    assert suite.baseline_for(suite.case("graphed@cudagraph")) == "baseline@cudagraph"
    assert suite.case("fora@compile").base_name == "fora"


def test_one_mode_keeps_the_names_as_written(write_suite, registry):
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "execution: compile\ncases:\n  - name: baseline\n  - name: x\n    gate: never\n"), registry)
    assert [(c.name, c.execution) for c in suite.cases] == [("baseline", "compile"), ("x", "compile")]
    assert suite.baseline_for(suite.case("x")) == "baseline"


@pytest.mark.parametrize("body, fragment", [
    ("execution: turbo\ncases:\n  - name: baseline\n", "unknown execution mode 'turbo'"),
    ("cases:\n  - name: baseline\n  - name: x\n    execution: [eager, graph]\n", "case 'x': field 'execution': unknown execution mode 'graph'"),
    ("compile: {backend: inductor, max_graphs: 0}\ncases:\n  - name: baseline\n", "compile.max_graphs"),
])
def test_bad_execution_settings_are_one_line_errors(write_suite, registry, body, fragment):
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(SMALL_SUITE_HEAD + body), registry)
    assert fragment in str(err.value) and "\n" not in str(err.value)


class FakeBackend:
    """Stands in for CUDA graphs: counts what is made and run."""

    needs_warmup = True

    def __init__(self):
        self.log = []

    def warm(self, x, t, **k):
        self.log.append("warm")
        return x + 1

    def make(self, x, t, **k):
        self.log.append("make")

        class Program:
            last = x + 2

            def __call__(program, x, t, **k):
                self.log.append("replay")
                return x + 3

        return Program()

    def close(self):
        self.log.append("close")


def test_one_program_per_key_captured_lazily_and_capped():
    keys = iter(["a", "a", "b", "a", "c", "b", "d"])
    backend = FakeBackend()
    eager = lambda x, t, **k: x  # noqa: E731
    runner = KeyedRunner(backend, eager, lambda: next(keys), max_graphs=2)
    x, t = torch.zeros(1), torch.zeros(1)
    results = [runner(x, t).item() for _ in range(7)]
    # a: warmup (eager); a: made; b: made; a: replayed; c: over the cap, eager; b: replayed; d: eager
    assert results == [1, 2, 2, 3, 0, 3, 0]
    assert backend.log == ["warm", "make", "make", "replay", "replay"]
    assert runner.counts() == {"graphs": 2, "replays": 2, "eager_fallback_steps": 2}
    runner.close()
    assert backend.log[-1] == "close" and not runner.programs


def test_graph_inputs_are_copied_in_place_and_shape_changes_refused():
    static = {"x": torch.zeros(2), "extra": {"mask": torch.zeros(3), "resolution": None}}
    x = static["x"]
    _copy(static, {"x": torch.ones(2), "extra": {"mask": torch.ones(3), "resolution": None}}, "inputs")
    assert static["x"] is x and torch.equal(x, torch.ones(2)) and torch.equal(static["extra"]["mask"], torch.ones(3))
    with pytest.raises(RuntimeError, match="changed shape"):
        _copy(static, {"x": torch.ones(3), "extra": {"mask": torch.ones(3), "resolution": None}}, "inputs")


def test_pinned_slots_write_into_the_same_tensors_across_calls():
    slots: Slots[int] = Slots()
    first = torch.zeros(4)
    slots.put(0, first, pinned=True)
    slots.put(0, torch.ones(4), pinned=True)
    assert slots[0] is first and torch.equal(first, torch.ones(4))  # same address: a graph may point at it
    slots.clear(pinned=True)
    assert slots[0] is first  # kept: a graph points at it, and a replayed store cannot put it back
    slots.put(0, torch.full((4,), 2.0), pinned=True)
    assert slots[0] is first and torch.equal(first, torch.full((4,), 2.0))
    slots.put(0, torch.zeros(5), pinned=True)  # another shape cannot be written in place
    assert slots[0] is not first and slots[0].shape == (5,)
    eager: Slots[int] = Slots()
    eager.put(1, first)
    replacement = torch.ones(4)
    eager.put(1, replacement)
    assert eager[1] is replacement  # eagerly no copy is made


def test_int8_packed_values_are_written_in_place_too(registry):
    int8 = build_part(registry.get("quantizer", "int8").cls, {})
    slots: Slots[int] = Slots()
    slots.put(0, int8.pack(torch.randn(3, 4)), pinned=True)
    held = slots[0]
    codes = held.codes
    value = torch.randn(3, 4)
    slots.put(0, int8.pack(value), pinned=True)
    assert slots[0] is held and slots[0].codes is codes
    torch.testing.assert_close(slots[0].unpack(), int8.pack(value).unpack())


def test_graph_key_follows_the_reuse_pattern_and_forecasts_stay_one_program(tiny, registry):
    def keys(s, steps=12):
        seen = []
        after = s.after_step
        s.after_step = lambda: seen.append(s.graph_key()) or after()
        scheduler = make_scheduler("ddim", tiny.scheduler_config)
        with adapter_for(tiny.transformer).install(tiny.transformer, s):
            denoise(tiny.transformer, scheduler, labels_condition([1], tiny.null_class, torch.device("cpu")), 0, steps, 4.0, s)
        return seen

    fora = keys(strategy(registry, ("interval", {"every": 3}), "attention-mlp-output"))
    assert len(set(fora)) == 2 and fora[0] != fora[1]
    taylor = keys(strategy(registry, ("warmup-interval", {"every": 4, "warmup": 2}), ("forecast", {"order": 4})))
    assert len(set(taylor)) == 2  # compute steps and forecast steps: whatever the distance and order reached


def test_unsupported_reasons():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert unsupported("cudagraph", cpu, None) == "needs CUDA"
    assert unsupported("eager", cpu, None) is None and unsupported("compile", cpu, None) is None
    from dqar_bench.core.plugins import load_registry

    registry = load_registry(autoload=False)
    fbc = strategy(registry, "residual-change", "block-residual")
    assert "decides inside the forward" in unsupported("cudagraph", cuda, fbc)
    assert unsupported("compile", cuda, fbc) is None
    kv = strategy(registry, "never", "kv")
    assert "cache 'kv'" in unsupported("cudagraph", cuda, kv)
    for cache in ("attention-output", "attention-mlp-output", "block-residual", "forecast"):
        assert unsupported("cudagraph", cuda, strategy(registry, "never", cache)) is None


@pytest.mark.slow
def test_compiled_peer_matches_eager_with_one_graph_per_pattern(tiny, registry):
    condition = labels_condition([1, 3], tiny.null_class, torch.device("cpu"))

    def run(mode):
        s = strategy(registry, ("interval", {"every": 3}), "attention-mlp-output")
        scheduler = make_scheduler("ddim", tiny.scheduler_config)
        execution = Execution(mode, tiny.transformer, s, ExecutionOptions(compile_backend="eager"))
        with adapter_for(tiny.transformer).install(tiny.transformer, s), execution as forward:
            out = denoise(tiny.transformer, scheduler, condition, 0, 6, 4.0, s, forward)
        return out, execution.report(), s.stats

    eager, _, eager_stats = run("eager")
    compiled, report, stats = run("compile")
    torch.testing.assert_close(compiled, eager)
    assert report["graphs"] == 2 and report["eager_fallback_steps"] == 0  # all-compute and all-reuse
    assert (stats.reused, stats.evaluations) == (eager_stats.reused, eager_stats.evaluations)


def test_cudagraph_without_cuda_is_recorded_unsupported_and_the_suite_goes_on(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + """\
execution: [eager, cudagraph]
cases:
  - name: baseline
  - name: fora
    gate: {name: interval, every: 3}
    cache: attention-mlp-output
""")
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0  # unsupported is not a failure
    records = {r.case: r for r in RunDir(out).records()}
    assert records["fora@cudagraph"].status == "unsupported"
    assert records["fora@cudagraph"].error == "unsupported in cudagraph: needs CUDA"
    assert records["fora@eager"].status == "ok" and records["fora@eager"].baseline_case == "baseline@eager"
    assert records["fora@eager"].execution_mode == "eager" and records["fora@eager"].execution["mode"] == "eager"
    table = (out / "table.md").read_text()
    assert "| fora@cudagraph | interval(every=3) / attention-mlp-output / none / all | unsupported in cudagraph: needs CUDA |" in table
    assert "failed" not in table


def record(case, mode, samples, baseline):
    return CaseRecord.from_json({"case": case, "status": "ok", "execution_mode": mode, "baseline_case": baseline, "latency_s": samples,
                                 "median_s": sorted(samples)[len(samples) // 2], "per_image_s": 0.0, "batch": 1, "steps": 2,
                                 "sampler": "ddim", "guidance_scale": 4.0, "device": "cpu", "dtype": "float32", "parts": {}})


def test_speedup_is_against_the_baseline_in_the_same_mode():
    records = [
        record("baseline@eager", "eager", [4.0, 4.0, 4.0], "baseline@eager"),
        record("baseline@compile", "compile", [1.0, 1.0, 1.0], "baseline@compile"),
        record("x@eager", "eager", [2.0, 2.0, 2.0], "baseline@eager"),
        record("x@compile", "compile", [0.8, 0.8, 0.8], "baseline@compile"),
    ]
    frame = results_frame(records, "baseline").set_index("case")
    assert frame.loc["x@eager", "speedup"] == pytest.approx(2.0)
    assert frame.loc["x@compile", "speedup"] == pytest.approx(1.25)  # not 5.0 against the eager baseline
    assert bool(frame.loc["baseline@compile", "is_baseline"]) and frame.loc["x@compile", "execution"] == "compile"
    assert "(reference)" in render_markdown(results_frame(records, "baseline"))


def test_records_of_a_mode_expanded_run_resume(write_suite, tmp_path, monkeypatch):
    body = SMALL_SUITE_HEAD + "execution: [eager, cudagraph]\ncases:\n  - name: baseline\n  - name: never\n    gate: never\n"
    path = write_suite(body)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["case"] for line in lines) == ["baseline@cudagraph", "baseline@eager", "never@cudagraph", "never@eager"]
    assert main(["run", str(path), "--resume", str(out)]) == 0
    assert len(RunDir(out).records()) == 4  # unsupported is an answer: not tried again
    never = {r.case: r for r in RunDir(out).records()}["never@eager"]
    assert never.quality["identical"] is True  # compared with the eager baseline's outputs


@pytest.mark.parametrize("case", ["baseline", "pab", "fora", "delta_dit", "taylorseer", "full_dqar"])
def test_graph_replays_match_eager_over_two_sampling_calls(tiny, registry, case):
    """What the cudagraph mode relies on, checked on the CPU: bookkeeping outside the forward,
    caches written in place, one program per step key, replayed across sampling calls."""
    from dqar_bench.config.suite import load_suite as load

    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    spec = load(root / "suites" / "peers.yaml", registry).case(f"{case}@eager")
    from dqar_bench.runs.runner import build_strategy

    condition = labels_condition([1, 3], tiny.null_class, torch.device("cpu"))

    def run(mode):
        s = build_strategy(spec, registry, 16)
        scheduler = make_scheduler("ddim", tiny.scheduler_config)
        backends = []
        execution = Execution(mode, tiny.transformer, s, graphs=lambda m: backends.append(ReplayedGraphs(m)) or backends[-1])
        outs = []
        with adapter_for(tiny.transformer).install(tiny.transformer, s), execution as forward:
            for seed in (0, 1):
                outs.append(denoise(tiny.transformer, scheduler, condition, seed, 12, 4.0, s, forward))
        return outs, execution.report(), s.stats if s else None

    (eager0, eager1), _, eager_stats = run("eager")
    (graph0, graph1), report, stats = run("cudagraph")
    torch.testing.assert_close(graph0, eager0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graph1, eager1, rtol=1e-4, atol=1e-4)
    assert report["replays"] > report["graphs"] > 0 and report["eager_fallback_steps"] == 0
    if stats is not None:
        assert (stats.reused, stats.evaluations) == (eager_stats.reused, eager_stats.evaluations)
