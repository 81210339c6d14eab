"""What DQAR pays for deciding and caching, against what its reuse saves, on two clocks.

On the CPU every figure is taken on both clocks at once: wall time (`time.perf_counter`)
and this process's CPU time (`time.process_time`, what `timing: {clock: cpu}` times). On a
CPU shared with other jobs, wall ratios spread with the load; CPU-time ratios of calls
interleaved in one process hold within a few percent. On a GPU (`--device cuda`) only wall
time means anything (the host's CPU time is spent waiting), and every timed region is
fenced by `torch.cuda.synchronize()` so that it measures its own work and not the queue in
front of it; the fences slow the wrapped calls down, which is why the time of a call comes
from calls without them. Calls of the cases being compared alternate (baseline, case,
baseline, case, ...) so drift hits them alike.

Regions inside a call are timed by wrapping them from the outside (the hot path carries
no timer in normal runs): `Strategy.before_step` (the scheduler's mask row, signals
gathered and moved to the host once, the gate's decision), `EntropyProbe.record` (the
probe's share inside a computing block, on compute steps only), and the quantizer's pack
and unpack.

Targets (issue 18), printed with a verdict:

1. `harness_overhead` (every block hooked, cached, never reused) at least 0.98x of the
   baseline on digits-dit (suites/ablations.yaml) and flux-tiny (suites/peers-flow.yaml);
2. on digits-dit, full_dqar's probe + quantizer + harness cost at most half of what its
   reuse saves (reused block calls x the mean time of an attention call);
3. on 4 blocks of a DiT-XL/2-shaped model (random weights, 256 tokens, 10 DDIM steps, one
   class label with CFG), full_dqar's decision cost (before_step + probe) at most 1 % of
   a call;
4. for every case of `--suite` (default suites/ablations.yaml) whose gate reads signals,
   the decision share (probe + signals + gate over a call's time) under 5 %, on the CPU's
   process time or the GPU's wall time (`decision_share`, which benchmarks/gpu_check.py
   calls on the GPU).

    python benchmarks/decision_overhead.py [--device cpu|cuda|cuda:N] [--rounds N] [--threads N] [--skip-xl] [--suite SUITE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dqar_bench.config.suite import load_suites
from dqar_bench.core.errors import DqarError
from dqar_bench.core.plugins import get_registry
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.models import DIT_XL_CONFIG, _random_dit, load_model
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.model.suite_condition import condition_for
from dqar_bench.runs.runner import build_strategy
from dqar_bench.runs.suite_model import resolve_device
from dqar_bench.strategies.quantizers.scaled import Scaled
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

ROOT = Path(__file__).resolve().parent.parent
CPU_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
GPU_CLOCKS = {"wall": time.perf_counter}
SHARE_GOAL = 0.05


def clocks(device: torch.device) -> dict[str, Callable[[], float]]:
    """Both clocks on the CPU; wall time alone on a GPU, where the host's CPU time is spent waiting."""
    return GPU_CLOCKS if device.type == "cuda" else CPU_CLOCKS


def fence(device: torch.device) -> None:
    """Wait for the GPU's queue, so a clock read after it counts the work before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulated seconds per region, on each clock of the device; fenced on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.clocks = device, clocks(device)
        self.seconds: dict[str, dict[str, float]] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            fence(self.device)
            starts = {c: clock() for c, clock in self.clocks.items()}
            try:
                return fn(*args, **kwargs)
            finally:
                fence(self.device)
                into = self.seconds.setdefault(name, {c: 0.0 for c in self.clocks})
                for c, clock in self.clocks.items():
                    into[c] += clock() - starts[c]

        return timed

    def get(self, name: str, clock: str) -> float:
        return self.seconds.get(name, {}).get(clock, 0.0)


@contextmanager
def part_timers(strategy: Strategy, watch: Stopwatch) -> Iterator[None]:
    """Timers on the strategy's decision points and its quantizer; everything put back on exit."""
    record, unpack = signals.EntropyProbe.record, Scaled.unpack
    strategy.before_step = watch.wrap("signals+gate", strategy.before_step)  # type: ignore[method-assign]
    signals.EntropyProbe.record = watch.wrap("probe", record)  # type: ignore[method-assign]
    strategy.quantizer.pack = watch.wrap("quantizer", strategy.quantizer.pack)  # type: ignore[method-assign]
    Scaled.unpack = watch.wrap("quantizer", unpack)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del strategy.before_step, strategy.quantizer.pack
        signals.EntropyProbe.record, Scaled.unpack = record, unpack  # type: ignore[method-assign]


class Bench:
    """One model, one sampling setting, strategies called in alternation."""

    def __init__(self, model: LoadedModel, condition: Any, sampler: str, steps: int, guidance: float, device: torch.device) -> None:
        self.model, self.condition, self.sampler, self.steps, self.guidance = model, condition, sampler, steps, guidance
        self.device, self.clocks = device, clocks(device)

    def call(self, strategy: Strategy | None) -> dict[str, float]:
        scheduler = make_scheduler(self.sampler, self.model.scheduler_config)
        transformer = self.model.transformer
        with adapter_for(transformer).install(transformer, strategy):
            fence(self.device)
            starts = {c: clock() for c, clock in self.clocks.items()}
            denoise(transformer, scheduler, self.condition, 0, self.steps, self.guidance, strategy)
            fence(self.device)
            return {c: clock() - starts[c] for c, clock in self.clocks.items()}

    def interleaved(self, cases: dict[str, Strategy | None], rounds: int) -> dict[str, dict[str, float]]:
        """Median seconds per call of each case on each clock; one warm call each first."""
        for strategy in cases.values():
            self.call(strategy)
        times: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, strategy in cases.items():
                times[name].append(self.call(strategy))
        return {name: {c: statistics.median(t[c] for t in ts) for c in self.clocks} for name, ts in times.items()}

    def timed_parts(self, strategy: Strategy, rounds: int) -> Stopwatch:
        """Seconds in the strategy's decision points and quantizer over `rounds` calls (its stats reset first)."""
        watch = Stopwatch(self.device)
        strategy.reset_stats()
        with part_timers(strategy, watch):
            for _ in range(rounds):
                self.call(strategy)
        return watch


def suite_bench(path: str | Path, device: torch.device) -> tuple[Bench, Any]:
    """The suite's model, sampler and first condition on `device` (which overrides the suite's)."""
    suite = load_suites(ROOT / path)[0]
    dtype = getattr(torch, suite.dtype)
    model = load_model(suite.model, device, dtype, suite.allow_download)
    condition = condition_for(suite, model, device, dtype)
    return Bench(model, condition, suite.sampler, suite.steps, suite.guidance_scale, device), suite


def harness_target(path: str, rounds: int, device: torch.device) -> list[str]:
    bench, suite = suite_bench(path, device)
    registry = get_registry()
    cases = {"baseline": None, "harness_overhead": build_strategy(suite.case("harness_overhead"), registry, suite.probe_queries)}
    t = bench.interleaved(cases, rounds)
    lines = []
    for c in bench.clocks:
        ratio = t["baseline"][c] / t["harness_overhead"][c]
        lines.append(f"  {suite.model:<11} {c:<4}: baseline {t['baseline'][c] * 1e3:8.2f} ms, harness_overhead {t['harness_overhead'][c] * 1e3:8.2f} ms"
                     f" -> {ratio:.3f}x  (target >= 0.98x: {'ok' if ratio >= 0.98 else 'MISSED'})")
    return lines


def attention_call_seconds(bench: Bench) -> dict[str, float]:
    """Mean seconds of one self-attention module call in the untouched model, each clock."""
    watch = Stopwatch(bench.device)
    modules = [block.attn1 for block in bench.model.transformer.transformer_blocks]
    for m in modules:
        m.forward = watch.wrap("attention", m.forward)
    calls = [0]
    counter = [m.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in modules]
    try:
        bench.call(None)
    finally:
        for m in modules:
            del m.forward
        for h in counter:
            h.remove()
    return {c: watch.get("attention", c) / calls[0] for c in bench.clocks}


def cost_target(rounds: int, device: torch.device) -> list[str]:
    bench, suite = suite_bench("suites/ablations.yaml", device)
    registry = get_registry()
    full = build_strategy(suite.case("full_dqar"), registry, suite.probe_queries)
    cases = {"baseline": None, "harness_overhead": build_strategy(suite.case("harness_overhead"), registry, suite.probe_queries), "full_dqar": full}
    t = bench.interleaved(cases, rounds)
    assert full is not None
    watch = bench.timed_parts(full, rounds)
    reused = full.stats.reused / rounds
    attention = attention_call_seconds(bench)
    lines = [f"  digits-dit full_dqar: {reused:.0f} block reuses per call (reuse {full.stats.reuse_ratio:.1%})"]
    for c in bench.clocks:
        probe = watch.get("probe", c) / rounds
        gate = watch.get("signals+gate", c) / rounds
        quant = watch.get("quantizer", c) / rounds
        harness = max(t["harness_overhead"][c] - t["baseline"][c], 0.0)
        saved = reused * attention[c]
        cost = probe + gate + quant + harness
        share = cost / saved if saved else float("inf")
        lines.append(
            f"  {c:<4}: saved {saved * 1e3:6.2f} ms (attention call {attention[c] * 1e6:.0f} us); probe {probe * 1e3:.2f} + signals+gate {gate * 1e3:.2f}"
            f" + quantizer {quant * 1e3:.2f} + harness {harness * 1e3:.2f} = {cost * 1e3:.2f} ms = {share:.2f} of the saving"
            f" (target <= 0.5: {'ok' if share <= 0.5 else 'MISSED'}); full_dqar {t['baseline'][c] / t['full_dqar'][c]:.3f}x of the baseline"
        )
    return lines


def xl_target(rounds: int, device: torch.device) -> list[str]:
    config = {**DIT_XL_CONFIG, "num_layers": 4}
    model = _random_dit("dit-xl-2-256-4-blocks-random", **config)
    model.transformer.to(device)
    bench = Bench(model, labels_condition([207], model.null_class, device), "ddim", 10, 4.0, device)
    suite = load_suites(ROOT / "suites/dit-xl-256.yaml")[0]
    registry = get_registry()
    case = suite.case("full_dqar")
    full = build_strategy(case, registry, suite.probe_queries)
    assert full is not None
    plain = bench.interleaved({"full_dqar": full}, rounds)["full_dqar"]
    watch = bench.timed_parts(full, rounds)
    lines = [f"  DiT-XL/2-shaped, 4 blocks, 256 tokens, 10 DDIM steps, CFG, 1 label: full_dqar (suites/dit-xl-256.yaml) reuse {full.stats.reuse_ratio:.1%}"]
    for c in bench.clocks:
        decision = (watch.get("probe", c) + watch.get("signals+gate", c)) / rounds
        share = decision / plain[c]
        lines.append(f"  {c:<4}: call {plain[c] * 1e3:8.1f} ms, decision {decision * 1e3:.2f} ms = {share:.2%} (target <= 1 %: {'ok' if share <= 0.01 else 'MISSED'})")
    return lines


def decision_share(suite_path: str | Path, rounds: int, device_name: str = "cpu") -> list[dict[str, Any]]:
    """Target 4: for each case whose gate reads signals, the share of a call spent deciding,
    on the device's own clock (CPU time on the CPU, fenced wall time on a GPU)."""
    device = resolve_device(device_name)
    bench, suite = suite_bench(suite_path, device)
    registry = get_registry()
    cases = {c.name: build_strategy(c, registry, suite.probe_queries) for c in suite.cases
             if not c.untouched and registry.get("gate", c.parts["gate"].name).cls.SIGNALS}
    if not cases:
        return []
    clock = "wall" if device.type == "cuda" else "cpu"
    plain = bench.interleaved(cases, rounds)
    rows = []
    for name, strategy in cases.items():
        assert strategy is not None
        watch = bench.timed_parts(strategy, rounds)
        probe, gate = watch.get("probe", clock) / rounds, watch.get("signals+gate", clock) / rounds
        rows.append({
            "case": name, "gate": suite.case(name).parts["gate"].name, "clock": clock,
            "sampling_ms": plain[name][clock] * 1000, "probe_ms": probe * 1000, "gate_ms": gate * 1000,
            "share": (probe + gate) / plain[name][clock], "reuse": strategy.stats.reuse_ratio,
        })
    return rows


def share_target(suite_path: str, rounds: int, device_name: str) -> list[str]:
    rows = decision_share(suite_path, rounds, device_name)
    if not rows:
        return [f"  (no case of {suite_path} has a gate that reads signals)"]
    lines = [f"  {'case':<22} {'gate':<10} {'call ms':>9} {'probe ms':>9} {'signals+gate ms':>16} {'share':>7} {'reuse':>6}  ({rows[0]['clock']} time)"]
    for r in rows:
        lines.append(f"  {r['case']:<22} {r['gate']:<10} {r['sampling_ms']:>9.1f} {r['probe_ms']:>9.2f} {r['gate_ms']:>16.2f} "
                     f"{r['share']:>7.2%} {r['reuse']:>6.1%}  (target < {SHARE_GOAL:.0%}: {'ok' if r['share'] < SHARE_GOAL else 'MISSED'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N | auto: where the models run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: tiny models run fastest on one)")
    parser.add_argument("--skip-xl", action="store_true", help="leave out the DiT-XL/2-shaped target (the slowest)")
    parser.add_argument("--suite", default="suites/ablations.yaml", help="the suite whose signal-reading cases target 4 measures (default suites/ablations.yaml)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.suite = args.suite if Path(args.suite).exists() else str(ROOT / args.suite)  # the repo's suites/ from anywhere
    try:
        device = resolve_device(args.device)
        load_suites(args.suite)
    except DqarError as exc:  # a bad suite or device: one line, no traceback
        print(f"decision_overhead: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    on = f"{device} (wall = perf_counter, fenced)" if device.type == "cuda" else "the CPU; wall = perf_counter, cpu = process_time"
    print(f"decision overhead on {on}, torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds")
    print("1. harness_overhead against the baseline")
    for path in ("suites/ablations.yaml", "suites/peers-flow.yaml"):
        print("\n".join(harness_target(path, args.rounds, device)))
    print("2. full_dqar's cost against what its reuse saves (digits-dit, suites/ablations.yaml)")
    print("\n".join(cost_target(args.rounds, device)))
    if not args.skip_xl:
        print("3. full_dqar's decision cost on a DiT-XL/2-shaped model")
        print("\n".join(xl_target(max(1, args.rounds // 2), device)))
    print(f"4. the decision share of every signal-reading case of {args.suite}")
    print("\n".join(share_target(args.suite, args.rounds, args.device)))


if __name__ == "__main__":
    main()
