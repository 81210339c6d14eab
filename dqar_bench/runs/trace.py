"""Traces: where is reusing a block's cache safe? Measured by running both branches.

The measurement. One sampling call is one case and one seed, with the suite's class
labels as one batch and its sampler, steps and guidance.

1. Reference: the call runs with the case's scheduler, cache and quantizer and a gate that
   never reuses, so every block computes at every step (its output equals the untouched
   model's). Every (step, block) where reuse was possible (the scheduler allows it and
   the cache holds something for the block) is a candidate; the policy features there
   (`dqar_bench.strategy.policy.features`, from the same signals the `policy` gate reads) are
   recorded.
2. Counterfactual: for each candidate (or `max_samples` of them, drawn with the seed as
   random seed) the call runs again, identical except that this one block reuses its
   cache at this one step; everything else computes.
3. `error = ||x_cf - x_ref||_2 / ||x_ref||_2` over the final latents of the whole batch,
   in float64; `label = 1` (reuse is safe) when `error <= tolerance`, else 0.

Cost: one reference call plus one call per candidate, so on dit-tiny (20 steps, 4 blocks,
nothing cached at step 0) 1 + 76 calls per seed. The case's own gate is replaced; cases
with the same scheduler, cache and quantizer give the same trace and are traced once.

What a label does not say: several reuses in one call compound, so a policy that reuses
in many places drifts further than any single label allows. Choose the tolerance tighter
than the quality you want, and judge a policy by running it in a suite.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.config.part_spec import new_part
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.context import StepContext
from dqar_bench.core.errors import DqarError
from dqar_bench.core.parts import Gate
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.measure.progress import Progress, eta
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.sampling import Condition
from dqar_bench.runs.suite_model import lean_call, load_for_suite, resolve_device, suite_threads
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.policy.features import ENTROPY_UNIT, FEATURES, SNR_SOURCE, feature_rows
from dqar_bench.strategy.policy.features import SIGNALS as POLICY_SIGNALS
from dqar_bench.strategy.strategy import Strategy

DEFAULT_TOLERANCE = 1e-3


class _Tracer(Gate):
    """Records the candidates' features (reference call) and reuses at one target (counterfactual)."""

    PLUGIN_NAME = "trace"
    SIGNALS = POLICY_SIGNALS
    snr, entropy = SNR_SOURCE, ENTROPY_UNIT  # the policy gate's forms of the signals

    def __init__(self) -> None:
        self.recording = False
        self.target: tuple[int, int] | None = None
        self.candidates: dict[tuple[int, int], tuple[int, list[float]]] = {}

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        if self.recording:
            rows = feature_rows(ctx, len(eligible)).tolist()
            for block, ok in enumerate(eligible):
                if ok:
                    self.candidates[(ctx.step, block)] = (ctx.timestep, rows[block])
        return [self.target == (ctx.step, block) for block in range(len(eligible))]


@dataclass
class TraceSummary:
    """What a trace run produced."""

    lines: int = 0
    safe: int = 0
    calls: int = 0
    cases: list[str] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        if not self.lines:
            return "no candidates traced (nothing was cached where reuse was allowed)"
        errs = sorted(self.errors)
        median, p90 = errs[len(errs) // 2], errs[min(len(errs) - 1, int(0.9 * len(errs)))]
        return (
            f"{self.lines} candidates from case(s) {', '.join(self.cases)} ({self.calls} sampling calls, "
            f"{self.seconds:.1f} s): {self.safe / self.lines:.1%} safe; relative error median {median:.2e}, "
            f"p90 {p90:.2e}, max {errs[-1]:.2e}"
        )


def select_cases(suite: Suite, names: list[str] | None, progress: Callable[[str], None] = print) -> list[Case]:
    """The cases to trace: those named, or every case that uses a cache; one per set of parts."""
    if names:
        known = [c.name for c in suite.cases]
        chosen = []
        for name in names:
            if name not in known:
                raise DqarError(f"{suite.path}: --case '{name}': no such case (cases: {', '.join(known)})")
            case = suite.case(name)
            if not case.parts:
                raise DqarError(f"{suite.path}: --case '{name}': the case uses no cache (it names no parts); name a case that does")
            chosen.append(case)
    else:
        chosen = [c for c in suite.cases if c.parts]
        if not chosen:
            raise DqarError(f"{suite.path}: no case uses a cache; add a case with 'cache: attention-output' (or any part)")
    unique: dict[tuple[str, ...], Case] = {}
    for case in chosen:
        key = tuple(case.parts[k].label() for k in ("scheduler", "cache", "quantizer"))
        if key in unique:
            progress(f"{case.name}: same scheduler, cache and quantizer as {unique[key].name}, traced once")
            continue
        unique[key] = case
    return list(unique.values())


def trace_suite(
    suite: Suite,
    output: str | Path,
    cases: list[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_samples: int | None = None,
    registry: Registry | None = None,
    progress: Callable[[str], None] = print,
) -> TraceSummary:
    """Trace the suite's cases into `output` (JSON lines, flushed after every sampling call)."""
    if not tolerance > 0:
        raise DqarError(f"--tolerance must be > 0, got {tolerance}")
    if max_samples is not None and max_samples < 1:
        raise DqarError(f"--max-samples must be >= 1, got {max_samples}")
    output = Path(output)
    if output.exists():
        raise DqarError(f"{output} already exists; choose another --output or delete it")
    registry = registry or get_registry()
    chosen = select_cases(suite, cases, progress)
    device = resolve_device(suite.device)
    with suite_threads(suite, device):
        return _trace_cases(suite, chosen, output, device, tolerance, max_samples, registry, progress)


def _trace_cases(
    suite: Suite,
    chosen: list[Case],
    output: Path,
    device: torch.device,
    tolerance: float,
    max_samples: int | None,
    registry: Registry,
    progress: Callable[[str], None],
) -> TraceSummary:
    model, condition = load_for_suite(suite, device)
    summary = TraceSummary(cases=[c.name for c in chosen])
    seeds = len(chosen) * len(suite.seeds)
    threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
    progress(f"tracing {len(chosen)} case(s) x {len(suite.seeds)} seed(s) on {suite.model} ({suite.steps} steps{threads}); a line per seed")
    bar = Progress(seeds)  # in calls once the first reference call has counted the candidates
    say = bar.wrap(progress)
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output.open("w", encoding="utf-8") as fh:
            done = 0
            for case in chosen:
                bar.case(case.name)
                parts = {k: new_part(s, registry) for k, s in case.parts.items() if k != "gate"}
                tracer = _Tracer()
                strategy = Strategy(parts["scheduler"], tracer, parts["cache"], parts["quantizer"], suite.probe_queries)  # type: ignore[arg-type]
                with adapter_for(model.transformer).install(model.transformer, strategy):
                    for seed in suite.seeds:
                        # the bar counts calls once known: later seeds as costly as this one
                        planned = functools.partial(_planned, bar, summary.calls, seeds - done)
                        lines, calls = _trace_call(suite, case, model, condition, strategy, tracer, seed, tolerance, max_samples, planned, bar.tick)
                        for line in lines:
                            fh.write(json.dumps(line, allow_nan=False) + "\n")
                        fh.flush()
                        done += 1
                        summary.calls += calls
                        summary.lines += len(lines)
                        summary.safe += sum(line["label"] for line in lines)
                        summary.errors += [line["error"] for line in lines]
                        left = eta(done, seeds, time.perf_counter() - start)
                        say(f"{case.name} seed {seed} ({done}/{seeds}): {len(lines)} candidates, {sum(line['label'] for line in lines)} safe; {left}")
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _planned(bar: Progress, done_calls: int, seeds_left: int, calls: int) -> None:
    bar.grow(done_calls + calls * seeds_left)


def _trace_call(
    suite: Suite,
    case: Case,
    model: LoadedModel,
    condition: Condition,
    strategy: Strategy,
    tracer: _Tracer,
    seed: int,
    tolerance: float,
    max_samples: int | None,
    planned: Callable[[int], None] = lambda calls: None,
    tick: Callable[[], None] = lambda: None,
) -> tuple[list[dict[str, Any]], int]:
    """One seed's lines; `planned` hears its count of calls once known, `tick` each call done."""
    def call() -> torch.Tensor:
        return lean_call(suite, model, condition, seed, strategy).double().cpu()

    tracer.recording, tracer.target, tracer.candidates = True, None, {}
    reference = call()
    tracer.recording = False
    candidates = sorted(tracer.candidates)
    if max_samples is not None and len(candidates) > max_samples:
        candidates = sorted(random.Random(seed).sample(candidates, max_samples))
    planned(1 + len(candidates))
    tick()
    scale = max(float(reference.norm()), 1e-12)
    lines = []
    for step, block in candidates:
        tracer.target = (step, block)
        before = strategy.stats.reused
        out = call()
        tick()
        if strategy.stats.reused - before != 1:
            raise RuntimeError(f"counterfactual at step {step}, block {block} reused {strategy.stats.reused - before} times, expected 1")
        error = float((out - reference).norm()) / scale
        timestep, row = tracer.candidates[(step, block)]
        lines.append({
            "suite": suite.name,
            "case": case.name,
            "seed": seed,
            "step": step,
            "block": block,
            "timestep": timestep,
            "features": {name: (v if math.isfinite(v) else None) for name, v in zip(FEATURES, row)},
            "error": error,
            "tolerance": tolerance,
            "label": int(error <= tolerance),
        })
    tracer.target = None
    return lines, 1 + len(candidates)
