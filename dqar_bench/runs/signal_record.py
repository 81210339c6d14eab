"""Record every gate's signals on the untouched model: the measurement behind `dqar-bench calibrate`.

A threshold is only meaningful against the signal it is compared with, measured the way
the gate measures it. So the signals are read through the strategy's own signal path, by
gates that ask for a signal and never reuse (as `trace`'s `_Tracer` does): the strategy
measures, the gate writes down what it was handed, every block computes. One sampling call
per decision point, since a gate decides at one of them only:

1. untouched (no strategy): the schedule's timesteps and SNR (a step observer), the
   transformer's output per step (TeaCache's fit, `measure.signal_trace`), and MagCache's
   ratios (`magnitude_ratios`, per CFG branch where there are two passes);
2. at the step's start, attention-output cache: each block's normalised entropy, as the
   `entropy` gate reads it (the probe on the SDPA call of the block's own processor);
3. after block 0, block-residual cache: block 0's residual change (FirstBlockCache, DBCache F1B0);
4. at block 0's entry, block-residual cache: the change of block 0's modulated input
   (TeaCache); skipped (None) on a family that names no modulated input.

Calls 2-4 must give the untouched call's output bit for bit (nothing reuses, and the
probes only read); `record_signals` checks that, so a trace is never measured on a
perturbed trajectory. Cost: 3 or 4 sampling calls per seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dqar_bench.config.suite import Suite
from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import Gate, build_part
from dqar_bench.core.plugins import Registry
from dqar_bench.measure.signal_trace import SignalTrace, Value
from dqar_bench.model.families import family_of
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.sampling import Condition, guidance_mode, num_blocks
from dqar_bench.runs.suite_model import lean_call
from dqar_bench.strategies.gates.magnitude import magnitude_ratios
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy


class _Recorder(Gate):
    """Writes down the signal it is handed at each step it is asked; never reuses."""

    PLUGIN_NAME = "signal-record"
    SIGNAL = ""

    def __init__(self) -> None:
        self.seen: dict[int, Any] = {}

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        self.seen[ctx.step] = ctx.signals.get(self.SIGNAL)
        return [False] * len(eligible)


class _Entropy(_Recorder):
    SIGNAL = signals.ENTROPY
    SIGNALS = frozenset({signals.ENTROPY})


class _ResidualChange(_Recorder):
    SIGNAL = signals.RESIDUAL_CHANGE
    DECIDES_AFTER_BLOCK = 0


class _ModulationChange(_Recorder):
    SIGNAL = signals.MODULATION_CHANGE
    DECIDES_AFTER_BLOCK = -1


class _Steps:
    """A step observer of the untouched call: timesteps and schedule SNR, nothing else."""

    wants_x0 = False

    def __init__(self) -> None:
        self.timesteps: list[int] = []
        self.snr: list[float] = []

    def begin(self, num_steps: int, num_blocks: int, device: torch.device, timesteps: list[int] | None = None, branches: int = 1, noise: Any = None) -> None:
        self.timesteps, self.snr = [], []

    def before_step(self, ctx: StepContext) -> None:
        self.timesteps.append(ctx.timestep)
        self.snr.append(signals.schedule_snr(ctx.alpha_bar, ctx.sigma))

    def after_step(self) -> None:
        pass


def record_signals(model: LoadedModel, suite: Suite, condition: Condition, seeds: list[int], registry: Registry) -> SignalTrace:
    """The signals of `suite`'s sampler on `model`'s untouched baseline, averaged over `seeds`."""
    if not seeds:
        raise ValueError("record_signals needs at least one seed")
    transformer = model.transformer
    family = family_of(transformer)
    branches = 2 if guidance_mode(family, transformer.config, suite.guidance_scale) == "cfg-separate" else 1
    modulated = family.refusal(_ModulationChange) is None
    runs = [_record_seed(model, suite, condition, seed, registry, branches, modulated) for seed in seeds]
    first = runs[0]
    steps, blocks = len(first["timesteps"]), num_blocks(transformer)
    pairs = [[x, y] for run in runs if modulated for x, y in zip(run["modulation_change"], run["output_change"]) if _finite(x) and _finite(y)]
    ratios = [[_ratio([run["mag_ratios"][b][t] for run in runs]) for t in range(steps)] for b in range(branches)]
    return SignalTrace(
        timesteps=first["timesteps"],
        steps=steps,
        blocks=blocks,
        branches=branches,
        snr=[v if _finite(v) else None for v in first["snr"]],
        entropy=[[_mean([run["entropy"][t][b] for run in runs]) for b in range(blocks)] for t in range(steps)],
        residual_change=_step_means(runs, "residual_change", steps),
        modulation_change=_step_means(runs, "modulation_change", steps) if modulated else None,
        output_change=_step_means(runs, "output_change", steps),
        mag_ratios=ratios[0] if branches == 1 else ratios,
        rescale_pairs=pairs,
        seeds=list(seeds),
    )


def _record_seed(
    model: LoadedModel, suite: Suite, condition: Condition, seed: int, registry: Registry, branches: int, modulated: bool
) -> dict[str, Any]:
    transformer = model.transformer
    steps = _Steps()
    latents: list[torch.Tensor] = []
    output_change: list[Value] = []
    previous: list[torch.Tensor] = []
    calls = 0

    def keep(module: torch.nn.Module, args: tuple, out: Any) -> None:
        nonlocal calls
        calls += 1
        if (calls - 1) % branches:
            return  # the unconditional pass: the gates decide on the conditional one
        now = (out.sample if hasattr(out, "sample") else out[0]).detach()
        output_change.append(float(signals.residual_change(now, previous[0])) if previous else None)
        previous[:] = [now]

    handle = transformer.register_forward_hook(keep)
    try:
        ratios = magnitude_ratios(transformer, lambda: latents.append(lean_call(suite, model, condition, seed, steps)), branches=branches)
    finally:
        handle.remove()
    reference = latents[0]
    num_steps = len(steps.timesteps)
    run: dict[str, Any] = {
        "timesteps": steps.timesteps,
        "snr": steps.snr,
        "mag_ratios": ratios if branches == 2 else [ratios],
        "output_change": output_change,
    }
    blocks = num_blocks(transformer)
    seen = _recorded(model, suite, condition, seed, registry, _Entropy(), "attention-output", reference)
    run["entropy"] = [_entropies(seen.get(t), blocks) for t in range(num_steps)]
    seen = _recorded(model, suite, condition, seed, registry, _ResidualChange(), "block-residual", reference)
    run["residual_change"] = [_value(seen.get(t)) for t in range(num_steps)]
    if modulated:
        seen = _recorded(model, suite, condition, seed, registry, _ModulationChange(), "block-residual", reference)
        run["modulation_change"] = [_value(seen.get(t)) for t in range(num_steps)]
    return run


def _recorded(
    model: LoadedModel, suite: Suite, condition: Condition, seed: int, registry: Registry,
    gate: _Recorder, cache: str, reference: torch.Tensor,
) -> dict[int, Any]:
    """What `gate` was handed per step in one call with every block computing."""
    def part(kind: str, name: str) -> Any:
        return build_part(registry.get(kind, name).cls, {})

    strategy = Strategy(part("scheduler", "all"), gate, part("cache", cache), part("quantizer", "none"), suite.probe_queries)  # type: ignore[arg-type]
    with adapter_for(model.transformer).install(model.transformer, strategy):
        out = lean_call(suite, model, condition, seed, strategy)
    if strategy.stats.reused or not torch.equal(out, reference):
        raise RuntimeError(
            f"recording '{gate.SIGNAL}' on {model.name} changed the output ({strategy.stats.reused} reuses): "
            "the signals would not be the untouched model's"
        )
    return gate.seen


def _value(value: Any) -> Value:
    return float(value) if _finite(value) else None


def _entropies(values: list[float] | None, blocks: int) -> list[Value]:
    return [_value(v) for v in values] if values is not None else [None] * blocks


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _mean(values: list[Value]) -> Value:
    """The mean over the seeds that measured it (None where none did)."""
    defined = [v for v in values if _finite(v)]
    return sum(defined) / len(defined) if defined else None  # type: ignore[arg-type]


def _ratio(values: list[float]) -> float:
    """The seeds' mean ratio, kept to 5 decimals as the official calibrations keep each one
    (MagCache4FLUX/magcache_flux.py line 202); NaN where no seed measured one (a zero residual)."""
    mean = _mean(values)
    return round(mean, 5) if mean is not None else math.nan


def _step_means(runs: list[dict[str, Any]], name: str, steps: int) -> list[Value]:
    return [_mean([run[name][t] for run in runs]) for t in range(steps)]
