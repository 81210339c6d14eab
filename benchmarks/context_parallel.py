"""Context-parallel cases on GPUs: decisions and outputs against one GPU, and the time per call.

For a machine with at least two GPUs (NCCL); the CPU test (`tests/test_context_parallel.py`)
covers Ulysses over gloo only, since ring attention needs a CUDA attention backend. Each rank
runs every case twice: on its own GPU without context parallelism (the one-GPU reference,
identical on every rank) and split over all ranks, as Ulysses and as ring. Rank 0 prints, per
model, mode and case: whether the reuse map equals the reference's, the largest difference of
the gate's signals, the largest output difference relative to the output's scale, and the
median seconds per sampling call of both runs.

    torchrun --nproc-per-node 2 benchmarks/context_parallel.py [--models flux-tiny wan-tiny] [--dtype bfloat16] [--calls 5]

Ring attention runs diffusers' cuDNN backend (bfloat16 / float16); Ulysses runs the native
one. Tiny models are launch-bound: the seconds say what the collectives cost, not what a
full-size model gains. A case that fails prints its error in its row; the run goes on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from dqar_bench.core.world import init_world, launched_by_torchrun
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import denoise, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.context_parallel import Parallel, context_parallel, refusal
from dqar_bench.strategy.strategy import Strategy

STEPS, SEED, GUIDANCE = 8, 0, 3.5


def strategies(probe_queries: int) -> dict[str, Any]:
    from dqar_bench.strategies.caches.attention_output import AttentionOutput
    from dqar_bench.strategies.caches.block_residual import BlockResidual
    from dqar_bench.strategies.gates.dqar import Dqar
    from dqar_bench.strategies.gates.residual_change import ResidualChange
    from dqar_bench.strategies.quantizers.none import NoQuantization
    from dqar_bench.strategies.schedulers.all import AllBlocks

    return {
        "baseline": lambda: None,
        "dqar": lambda: Strategy(AllBlocks(), Dqar(threshold=2.34, snr_low=0.0, snr_high=1e9, warmup=1, deep_layer_snr_threshold=0.0), AttentionOutput(), NoQuantization(), probe_queries),
        "first-block-cache": lambda: Strategy(AllBlocks(), ResidualChange(threshold=0.5), BlockResidual(), NoQuantization()),
    }


def run(world: Any, model: Any, parallel: Parallel | None, strategy: Strategy | None, calls: int) -> dict[str, Any]:
    transformer = model.transformer
    if model.spec.text is None:
        raise SystemExit(f"{model.name}: a text model is needed (flux-tiny, wan-tiny)")
    cond = synthetic_captions([4, 6], model.text_width, world.device, transformer.dtype, model.spec.text, model.pooled_width, model.text_length)
    seen: list[dict[str, Any]] = []
    if strategy is not None:
        decide = strategy.gate.decide
        strategy.gate.decide = lambda ctx, eligible: (seen.append(dict(ctx.signals)), decide(ctx, eligible))[1]
    seconds = []
    with adapter_for(transformer).install(transformer, strategy), context_parallel(transformer, parallel, world, model.family, strategy):
        for i in range(calls + 1):  # the first call is the cold one
            if strategy is not None:
                strategy.reset_stats()
            seen.clear()
            sync(world.device)
            start = time.perf_counter()
            latents = denoise(transformer, make_scheduler("flow-euler", model.scheduler_config), cond, SEED, STEPS, GUIDANCE, strategy)
            sync(world.device)
            if i:
                seconds.append(time.perf_counter() - start)
    return {"latents": latents.float(), "reuse_map": strategy.stats.reuse_map if strategy else None, "signals": list(seen), "s": statistics.median(seconds)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def signal_gap(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    gap = 0.0
    for x, y in zip(a, b):
        for key in x:
            xs, ys = (x[key], y[key]) if isinstance(x[key], list) else ([x[key]], [y[key]])
            gap = max([gap, *(abs(u - v) for u, v in zip(xs, ys) if u == u and v == v)])
    return gap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["flux-tiny", "wan-tiny"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--probe-queries", type=int, default=5)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run over gloo (Ulysses only)")
    args = parser.parse_args()
    if not launched_by_torchrun():
        print("start it as several ranks: torchrun --nproc-per-node 2 benchmarks/context_parallel.py", file=sys.stderr)
        return 2
    world = init_world(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    for name in args.models:
        model = load_model(name, world.device, dtype)
        for case, make in strategies(args.probe_queries).items():
            reference = run(world, model, None, make(), args.calls)
            for mode in ("ulysses", "ring"):
                parallel = Parallel(mode, world.world_size)
                why = refusal(parallel, model.transformer, model.family, world, "eager", dtype)
                if why:
                    rows.append((name, mode, case, f"unsupported: {why}"))
                    continue
                try:
                    split = run(world, model, parallel, make(), args.calls)
                except Exception as exc:  # noqa: BLE001 - a row per failure, the others still run
                    rows.append((name, mode, case, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
                    continue
                scale = reference["latents"].abs().max().item()
                diff = (split["latents"] - reference["latents"]).abs().max().item() / max(scale, 1e-12)
                same = split["reuse_map"] == reference["reuse_map"]
                rows.append((name, mode, case, (
                    f"reuse map {'equal' if same else 'DIFFERS'}; signals max gap {signal_gap(split['signals'], reference['signals']):.2e}; "
                    f"output max rel diff {diff:.2e}; s/call 1 GPU {reference['s']:.4f}, {world.world_size} GPUs {split['s']:.4f}"
                )))
    if world.is_main:
        print(f"| model | mode | case | {world.world_size} ranks, {args.dtype}, {STEPS} steps |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
