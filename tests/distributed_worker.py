"""One rank of the two-process tests (`test_distributed.py` starts two of these, as torchrun would).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/distributed_worker.py SCENARIO OUTDIR

Each phase writes what it found to OUTDIR/<phase>-rank<r>.json (or the error it met), so a
failing phase is visible on its own; the test compares them with one-process results. The
phases of a scenario share one pair of processes (each start costs seconds of imports).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from dqar_bench.core.world import RankError, init_world
from dqar_bench.strategy.rank_signals import (
    global_snr,
    head_sharded_entropy,
    key_sharded_attention_entropy,
    key_sharded_entropy,
    main_decides,
    sampled_queries,
)

torch.set_num_threads(1)
OUT = Path(".")  # set by main: the folder the test reads
TOKENS, SPLIT = 37, 20  # rank 0 holds tokens [0, 20), rank 1 [20, 37): uneven on purpose
HEADS_SPLIT = 2  # rank 0 holds heads [0, 2), rank 1 [2, 3)


def write(phase: str, rank: int, value: object) -> None:
    (OUT / f"{phase}-rank{rank}.json").write_text(json.dumps(value))


def attention_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """q, k of [batch 2, heads 3, 37 tokens, 8]; scaled so some rows are sharp, some flat."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, TOKENS, 8, generator=g) * torch.tensor([0.3, 2.0, 6.0]).view(1, 3, 1, 1)
    return q, torch.randn(2, 3, TOKENS, 8, generator=g)


def latents_and_x0() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g) * 0.7


def signals(world) -> dict:
    r = world.rank
    latents, x0 = latents_and_x0()
    rows = slice(0, 3) if r == 0 else slice(3, 5)  # uneven batch split
    q, k = attention_inputs()
    tokens = slice(0, SPLIT) if r == 0 else slice(SPLIT, TOKENS)
    q_rows = sampled_queries(world, q[:, :, tokens], tokens.start, TOKENS, 16)
    heads = slice(0, HEADS_SPLIT) if r == 0 else slice(HEADS_SPLIT, 3)
    scores = torch.stack([q @ k.transpose(-1, -2) * 8**-0.5, torch.full((2, 3, TOKENS, TOKENS), float("nan"))])  # block 1 never recorded
    return {
        "snr": global_snr(world, latents[rows], x0[rows]).item(),
        "entropy": key_sharded_attention_entropy(world, q_rows, k[:, :, tokens]).item(),
        "block_entropies": key_sharded_entropy(world, scores[..., tokens]).tolist(),
        "head_entropies": head_sharded_entropy(world, scores[:, :, heads]).tolist(),
        "decisions": main_decides(world, [r == 0, r == 1, True]),
    }


def collectives(world) -> dict:
    gathered = world.gather({"case": "baseline", "rank": world.rank}, "gather records")
    told = world.broadcast({"skip": ["a", "b"]} if world.is_main else None, "broadcast decisions")
    world.require_same("cpu", "device type")
    try:
        world.require_same(f"cuda:{world.rank}" if world.rank else "cpu", "device type")
        disagreement = None
    except RankError as exc:
        disagreement = str(exc)
    return {"gathered": gathered, "told": told, "disagreement": disagreement, "shard": world.shard(list(range(7)))}


def fid(world) -> dict | None:
    """This rank's share of the one-process FID images (made by the test with the real model), scored on rank 0."""
    from distributed_common import FID_BATCH, FID_COUNT, FID_EXTRACTOR, FID_METRICS, FID_REFERENCE
    from safetensors.torch import load_file

    from dqar_bench.measure.fidelity import Extractor, Fidelity
    from dqar_bench.measure.instruments import fid_image_indices
    from dqar_bench.runs.distributed.fid import gather_features

    indices = fid_image_indices(FID_COUNT, FID_BATCH, world.rank, world.world_size)
    images = load_file(str(OUT / "fid-images.safetensors"))["images"][indices]
    extractor = Extractor(FID_EXTRACTOR, metrics=FID_METRICS)
    feats = gather_features(world, extractor.features(images) if len(indices) else {}, indices)
    mine = {"images": len(indices), "first": indices[:1]}
    if not world.is_main:
        return mine
    return {**mine, "score": Fidelity(FID_REFERENCE, extractor).score_features(feats)}


def hang(world) -> str | None:
    world.barrier("start of the hang phase")  # rank 0 may still be scoring FID
    if world.rank == 1:
        time.sleep(5)  # well past rank 0's barrier timeout
        return None
    try:
        world.barrier("records of case 3", timeout_s=1.5)
    except RankError as exc:
        return str(exc)
    return None


def die(world) -> list[str]:
    if world.rank == 1:
        os._exit(3)  # no goodbye: a killed rank
    time.sleep(0.5)
    messages = []
    try:
        world.gather({"case": "x"}, "gather records")  # a monitored barrier first
    except RankError as exc:
        messages.append(str(exc))
    try:
        global_snr(world, *latents_and_x0())  # a bare all_reduce, as a gate's signal is
    except RankError as exc:
        messages.append(str(exc))
    return messages


SCENARIOS = {
    "equal": [("signals", signals), ("collectives", collectives), ("fid", fid), ("hang", hang)],
    "die": [("die", die)],  # apart: after a timed-out barrier gloo closes the pair, so a death would not be the cause
}


def main() -> int:
    global OUT
    OUT = Path(sys.argv[2])
    world = init_world("cpu", timeout_s=60)
    write("world", world.rank, {"rank": world.rank, "size": world.world_size, "backend": world.backend, "device": str(world.device)})
    for phase, run in SCENARIOS[sys.argv[1]]:
        try:
            write(phase, world.rank, {"ok": run(world)})
        except Exception as exc:
            write(phase, world.rank, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
