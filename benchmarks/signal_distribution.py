"""What DQAR's gates would read on a suite's model, step by step: the measurement thresholds come from.

For the suite's model, sampler, steps, guidance, conditioning and first seed, it runs one
sampling call with a gate that never reuses but asks for every signal, and prints per step
the schedule's SNR (what `snr` and `dqar` read by default), the seed's x0-based SNR
(`snr: x0`), and each block's attention entropy, normalised (`H / log N_keys`, the
default) and in nats, from the suite's `probe_queries` sampled rows. A window or a tau is
then read off the table (the suites' comments say which rows they used).

    python benchmarks/signal_distribution.py suites/ablations.yaml [--seed N] [--nats]

A suite that lists several models is measured on each in turn.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import torch

from dqar_bench.config.suite import load_suites
from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import Gate, build_part
from dqar_bench.core.plugins import get_registry
from dqar_bench.runs.suite_model import lean_call, load_for_suite, resolve_device
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy


@dataclass
class Recorder(Gate):
    """Never reuses; keeps every step's signals (schedule SNR, x0 SNR, entropies)."""

    PLUGIN_NAME = "recorder"
    SIGNALS = frozenset({signals.ENTROPY, signals.SNR})
    snr: str = "x0"
    entropy: str = "normalised"
    rows: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        self.rows.append({
            "step": ctx.step,
            "timestep": ctx.timestep,
            "schedule_snr": signals.schedule_snr(ctx.alpha_bar, ctx.sigma),
            "x0_snr": ctx.signals[signals.SNR],
            "entropy": list(ctx.signals[signals.ENTROPY]),
        })
        return [False] * len(eligible)


def measure(suite: Any, seed: int | None, unit: str) -> list[dict[str, Any]]:
    registry = get_registry()
    device = resolve_device(suite.device)
    torch.set_num_threads(suite.threads)
    model, condition = load_for_suite(suite, device)
    gate = Recorder(entropy=unit)
    strategy = Strategy(
        build_part(registry.get("scheduler", "all").cls, {}), gate,
        build_part(registry.get("cache", "attention-output").cls, {}),
        build_part(registry.get("quantizer", "none").cls, {}), suite.probe_queries,
    )
    with adapter_for(model.transformer).install(model.transformer, strategy):
        lean_call(suite, model, condition, suite.seeds[0] if seed is None else seed, strategy)
    return gate.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--seed", type=int, default=None, help="the seed (default: the suite's first)")
    parser.add_argument("--nats", action="store_true", help="entropies in nats instead of normalised")
    args = parser.parse_args()
    unit = "nats" if args.nats else "normalised"
    for suite in load_suites(args.suite):  # one per model of the suite
        show(suite, measure(suite, args.seed, unit), unit)


def show(suite: Any, rows: list[dict[str, Any]], unit: str) -> None:
    print(f"signals on {suite.model}, {suite.sampler} {suite.steps} steps, guidance {suite.guidance_scale}, "
          f"probe_queries {suite.probe_queries}; entropy {unit}; step 0 has no entropy or x0 yet")
    print(f"{'step':>4} {'t':>5} {'schedule SNR':>13} {'x0 SNR':>10}  entropy per block")
    for r in rows:
        ent = " ".join(f"{h:.3f}" for h in r["entropy"])
        print(f"{r['step']:>4} {r['timestep']:>5} {r['schedule_snr']:>13.4g} {r['x0_snr']:>10.4g}  {ent}")


if __name__ == "__main__":
    main()
