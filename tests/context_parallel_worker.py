"""One rank of the two-rank context-parallel test (`test_context_parallel.py` starts two, as torchrun would).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/context_parallel_worker.py OUTDIR

Runs every case of `context_parallel_common.cases()` on one flux-tiny split by Ulysses over
the two ranks (diffusers' own context parallelism, gloo), then the untouched model once more
without it ("after"), then decisions each rank would take differently, through the seam alone
and through a strategy whose gate answers by rank ("by-rank");
writes OUTDIR/cp-rank<r>.safetensors and .json (or the error).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import save_file

from dqar_bench.core.world import init_world
from dqar_bench.strategy.context_parallel import Parallel, ShardedSequence

torch.set_num_threads(1)


def main() -> int:
    from context_parallel_common import cases, load, rank_gate_strategy, run_case

    out = Path(sys.argv[1])
    world = init_world("cpu", timeout_s=60)
    found: dict = {"rank": world.rank}
    try:
        model = load(world)
        tensors = {}
        for name, strategy in cases().items():
            ran = run_case(world, Parallel("ulysses", 2), strategy, model)
            tensors[name] = ran["latents"].contiguous()
            found[name] = {"reuse_map": ran["reuse_map"], "signals": ran["signals"], "flops": ran["flops"]}
        tensors["after"] = run_case(world, None, None, model)["latents"].contiguous()
        found["agreed"] = ShardedSequence(world, ()).agree([world.rank == 0, world.rank == 1, True])
        ran = run_case(world, Parallel("ulysses", 2), rank_gate_strategy(world.rank), model)
        found["by-rank"], tensors["by-rank"] = ran["reuse_map"], ran["latents"].contiguous()
        save_file(tensors, str(out / f"cp-rank{world.rank}.safetensors"))
    except Exception as exc:
        found["error"] = f"{type(exc).__name__}: {exc}"
        found["traceback"] = traceback.format_exc()
    (out / f"cp-rank{world.rank}.json").write_text(json.dumps(found))
    world.close()
    return 1 if "error" in found else 0


if __name__ == "__main__":
    sys.exit(main())
