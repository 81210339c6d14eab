"""`timing: {clock: cpu}`: the process's CPU time, which a busy neighbour does not stretch;
tables name the clock and `compare` never pairs two clocks."""

from __future__ import annotations

import time

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.measure import timing
from dqar_bench.measure.timing import CallTimer
from tests import synthetic

SUITE = """\
name: clocked
model: dit-tiny
sampler: {{name: ddim, steps: 2, guidance_scale: 4.0}}
class_labels: [1]
seeds: [0]
device: cpu
threads: 1
timing: {{warmup: 0, repeats: 2{clock}}}
baseline: baseline
cases:
  - name: baseline
  - name: iv
    gate: {{name: interval, every: 2}}
    cache: attention-output
"""


def test_the_cpu_clock_times_at_the_same_points_with_process_time(monkeypatch):
    wall, cpu = synthetic.VirtualClock(), synthetic.VirtualClock()
    monkeypatch.setattr(timing, "_clock", wall)
    monkeypatch.setattr(timing, "_cpu_clock", cpu)

    class Step(torch.nn.Module):
        def forward(self, x):
            cpu.advance(0.002)
            return x

    model = Step()
    with CallTimer(torch.device("cpu"), model, clock="cpu") as timer:
        t, _ = timer.time(lambda: (cpu.advance(0.001), model(torch.zeros(1)), model(torch.zeros(1)), wall.advance(5.0)))
    assert timer.method == "process_time"
    assert t.seconds == pytest.approx(0.005) and t.steps == pytest.approx([0.002, 0.002])


def test_cpu_time_does_not_count_time_given_to_others():
    """A call that waits (as it does while the scheduler runs another job) costs wall time, not CPU time."""
    wall, cpu = CallTimer(torch.device("cpu")), CallTimer(torch.device("cpu"), clock="cpu")
    t_wall, _ = wall.time(lambda: time.sleep(0.2))
    t_cpu, _ = cpu.time(lambda: time.sleep(0.2))
    assert t_wall.seconds >= 0.2 and t_cpu.seconds < 0.05


def test_the_clock_field_and_its_bad_values(write_suite, capsys):
    assert load_suite(write_suite(SUITE.format(clock=", clock: cpu"))).clock == "cpu"
    assert load_suite(write_suite(SUITE.format(clock=""))).clock == "wall"
    path = write_suite(SUITE.format(clock=", clock: thread"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "field 'timing.clock': 'thread' is not one of wall, cpu" in err
    with pytest.raises(Exception, match="clock: wall on a CUDA device"):
        CallTimer(torch.device("cuda"), clock="cpu")


def test_tables_name_the_clock_and_compare_refuses_two_clocks(write_suite, tmp_path, capsys):
    runs = {}
    for clock in ("cpu", "wall"):
        runs[clock] = tmp_path / clock
        assert main(["run", str(write_suite(SUITE.format(clock=f", clock: {clock}"), f"{clock}.yaml")), "-o", str(runs[clock])]) == 0
    out = capsys.readouterr().out
    assert "timer: process_time" in out and "timer: perf_counter" in out
    assert main(["compare", str(runs["cpu"]), str(runs["cpu"])]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs["wall"]), str(runs["cpu"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "timed with perf_counter in the base run and process_time in the new one" in err
