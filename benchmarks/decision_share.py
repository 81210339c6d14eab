"""How much of the sampling time goes into deciding: entropy probes, signals and gates.

For every case of a suite whose gate reads signals (the DQAR cases), it times plain
sampling calls, then runs the same calls again with timers wrapped around the two
places where deciding happens, from the outside, so the hot path carries no timer in
normal runs:

- `Strategy.before_step`: the scheduler's mask row, the signals computed (the entropies
  of every block from the probe's buffer, the latent SNR) and moved to the host (the one
  sync per step), and the gate's decisions;
- `dqar_bench.strategy.signals.EntropyProbe.record`: the probe's share inside a computing block
  (sampled scores written to the buffer), on compute steps only.

On a GPU each timed region is fenced by `torch.cuda.synchronize()` so that it measures
its own work and not the queue in front of it (the fences slow those calls down, which
is why the sampling time comes from the unwrapped calls). On the CPU the clock is the
process's CPU time, so that other processes competing for the cores (a shared machine,
CI) do not blur the share. The goal is a share under 5 %.

    python benchmarks/decision_share.py [suites/ablations.yaml] [--calls N] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import DqarError
from dqar_bench.core.plugins import get_registry
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import make_scheduler, sample
from dqar_bench.runs.runner import build_strategy, resolve_device
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

GOAL = 0.05


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on a GPU (fenced by syncs), this process's CPU time on the CPU."""
    return time.perf_counter if device.type == "cuda" else time.process_time


class Stopwatch:
    """Accumulated seconds per region; fenced on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.clock = clock(device)
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.cuda:
                torch.cuda.synchronize()
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.cuda:
                    torch.cuda.synchronize()
                self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start

        return timed


@contextmanager
def decision_timers(strategy: Strategy, watch: Stopwatch) -> Iterator[None]:
    """Timers on this strategy's decision points; everything is put back on exit."""
    record = signals.EntropyProbe.record
    strategy.before_step = watch.wrap("signals+gate", strategy.before_step)  # type: ignore[method-assign]
    signals.EntropyProbe.record = watch.wrap("probe", record)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del strategy.before_step
        signals.EntropyProbe.record = record  # type: ignore[method-assign]


def measure(suite_path: str, calls: int, device_name: str | None = None) -> list[dict[str, Any]]:
    """`device_name` (cpu, cuda, cuda:N, auto) overrides the suite's `device`."""
    suite = load_suite(suite_path)
    registry = get_registry()
    device = resolve_device(device_name or suite.device)
    model = load_model(suite.model, device, getattr(torch, suite.dtype), suite.allow_download)
    scheduler = make_scheduler(suite.sampler, model.scheduler_config)
    rows = []
    for case in suite.cases:
        if case.untouched or not registry.get("gate", case.parts["gate"].name).cls.SIGNALS:
            continue
        strategy = build_strategy(case, registry, suite.probe_queries)
        assert strategy is not None

        def call(seed: int) -> None:
            sample(model.transformer, scheduler, suite.class_labels, seed, suite.steps,
                   suite.guidance_scale, model.null_class, observer=strategy)
            if device.type == "cuda":
                torch.cuda.synchronize()

        seeds = [suite.seeds[i % len(suite.seeds)] for i in range(calls)]
        with adapter_for(model.transformer).install(model.transformer, strategy):
            for seed in suite.seeds[: max(suite.warmup, 1)]:
                call(seed)
            plain = []
            now = clock(device)
            for seed in seeds:
                start = now()
                call(seed)
                plain.append(now() - start)
            watch = Stopwatch(device)
            strategy.reset_stats()
            with decision_timers(strategy, watch):
                for seed in seeds:
                    call(seed)
        sampling = statistics.median(plain)
        probe = watch.seconds.get("probe", 0.0) / calls
        gate = watch.seconds.get("signals+gate", 0.0) / calls
        rows.append({
            "case": case.name,
            "gate": case.parts["gate"].name,
            "sampling_ms": sampling * 1000,
            "probe_ms": probe * 1000,
            "gate_ms": gate * 1000,
            "share": (probe + gate) / sampling,
            "reuse": strategy.stats.reuse_ratio,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="suites/ablations.yaml")
    parser.add_argument("--calls", type=int, default=5, help="sampling calls per case (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: tiny models run fastest on one)")
    parser.add_argument("--device", help="cpu | cuda | cuda:N | auto (default: the suite's device)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        rows = measure(args.suite, args.calls, args.device)
    except DqarError as exc:  # a bad suite or device: one line, no traceback
        print(f"decision_overhead: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    where = "wall time, GPU" if resolve_device(args.device or load_suite(args.suite).device).type == "cuda" else "CPU time"
    print(f"decision overhead, {args.suite} ({args.calls} calls per case, {where}, torch threads {torch.get_num_threads()}; goal < {GOAL:.0%})")
    print(f"{'case':<22} {'gate':<10} {'sampling ms':>12} {'probe ms':>9} {'signals+gate ms':>16} {'share':>7} {'reuse':>6}  goal")
    for r in rows:
        verdict = "ok" if r["share"] < GOAL else "OVER"
        print(f"{r['case']:<22} {r['gate']:<10} {r['sampling_ms']:>12.1f} {r['probe_ms']:>9.2f} "
              f"{r['gate_ms']:>16.2f} {r['share']:>7.2%} {r['reuse']:>6.1%}  {verdict}")
    if not rows:
        print("(no case of this suite has a gate that reads signals)")


if __name__ == "__main__":
    main()
