"""What the two-rank context-parallel test and its one-process reference share: model, cases, one sampling call each."""

from __future__ import annotations

from typing import Any

import torch

from dqar_bench.core.world import World
from dqar_bench.strategy.context_parallel import Parallel, context_parallel
from dqar_bench.strategy.strategy import Strategy

MODEL, STEPS, SEED, GUIDANCE = "flux-tiny", 8, 0, 3.5
CAPTIONS = [4, 6]  # two captions, padded to 6 text tokens: 3 per rank; 16 image tokens: 8 per rank
PROBE_QUERIES = 5  # fewer than the 16 image tokens and the 22 joint ones: the probe samples rows


def cases() -> dict[str, Strategy | None]:
    """The untouched model, DQAR's gate (entropy threshold between the tiny model's block entropies), FirstBlockCache."""
    from dqar_bench.strategies.caches.attention_output import AttentionOutput
    from dqar_bench.strategies.caches.block_residual import BlockResidual
    from dqar_bench.strategies.gates.dqar import Dqar
    from dqar_bench.strategies.gates.residual_change import ResidualChange
    from dqar_bench.strategies.quantizers.none import NoQuantization
    from dqar_bench.strategies.schedulers.all import AllBlocks
    from dqar_bench.strategy.signal_scope import ProjectedProbe

    dqar = Dqar(threshold=ENTROPY_THRESHOLD, entropy="nats", snr="x0", snr_low=0.0, snr_high=1e9, warmup=1, deep_layer_snr_threshold=0.0)
    probed = Strategy(AllBlocks(), dqar, AttentionOutput(), NoQuantization(), PROBE_QUERIES)
    probed.scope = ProjectedProbe()  # ranks probe by projection (their SDPA sees a part); so does the one-process reference
    return {
        "baseline": None,
        "dqar": probed,
        "first-block-cache": Strategy(AllBlocks(), ResidualChange(threshold=RESIDUAL_THRESHOLD), BlockResidual(), NoQuantization()),
    }


def rank_gate_strategy(rank: int) -> Strategy:
    """A gate whose answer depends on the rank that asks (reuse blocks b with b + rank even, from step 2):
    the rank-local signal the seam must overrule, or the ranks would run different blocks."""
    from dataclasses import dataclass

    from dqar_bench.core.parts import Gate
    from dqar_bench.strategies.caches.attention_output import AttentionOutput
    from dqar_bench.strategies.quantizers.none import NoQuantization
    from dqar_bench.strategies.schedulers.all import AllBlocks

    @dataclass
    class ByRank(Gate):
        PLUGIN_NAME = "by-rank"

        def decide(self, ctx, eligible):
            return [e and ctx.step >= 2 and (b + rank) % 2 == 0 for b, e in enumerate(eligible)]

    return Strategy(AllBlocks(), ByRank(), AttentionOutput(), NoQuantization())


ENTROPY_THRESHOLD = 2.34
RESIDUAL_THRESHOLD = 0.5


def load(world: World) -> Any:
    from dqar_bench.model.models import load_model

    return load_model(MODEL, world.device, torch.float32)


def run_case(world: World, parallel: Parallel | None, strategy: Strategy | None, model: Any = None) -> dict[str, Any]:
    """One sampling call of flux-tiny (`model`, or a fresh one) with `strategy`, context-parallel
    when `parallel` is given: the final latents, the reuse map, the signals the gate read at each step,
    and the FLOPs of the call (over all ranks, as the runner records them)."""
    from dqar_bench.measure.flops import count_flops
    from dqar_bench.model.conditioning import synthetic_captions
    from dqar_bench.model.sampling import denoise, make_scheduler
    from dqar_bench.strategy.adapter import adapter_for
    from dqar_bench.strategy.context_parallel import whole_call_flops

    model = model if model is not None else load(world)
    condition = synthetic_captions(CAPTIONS, model.text_width, world.device, torch.float32, model.spec.text, model.pooled_width, model.text_length)
    scheduler = make_scheduler("flow-euler", model.scheduler_config)
    transformer = model.transformer
    seen: list[dict[str, Any]] = []
    if strategy is not None:
        decide = strategy.gate.decide

        def recording(ctx, eligible):  # what the gate read, step by step
            seen.append({"step": ctx.step, **{k: v for k, v in ctx.signals.items()}})
            return decide(ctx, eligible)

        strategy.gate.decide = recording
    with adapter_for(transformer).install(transformer, strategy), context_parallel(transformer, parallel, world, "flux", strategy):
        latents, flops = count_flops(lambda: denoise(transformer, scheduler, condition, SEED, STEPS, GUIDANCE, strategy))
    if parallel is not None:
        flops = whole_call_flops(world, {SEED: flops})[SEED]
    return {
        "flops": {"total": flops.total, **flops.by_op},
        "latents": latents.detach().cpu(),
        "reuse_map": strategy.stats.reuse_map if strategy is not None else None,
        "signals": seen,
    }
