"""Who prepares one case, and how its sampling calls fall among them: the one place that decides.

A case runs on one device per call or, with `parallel: {ulysses: N}` / `{ring: N}`, one call
split over N ranks (`context_parallel`). That single fact decides everything the runner does
differently for it, so it is decided here, once per case, and every other part reads it:

- **data parallel** (a case on one device per call): the run's group (`RunContext.group`:
  the whole world, or this rank alone under `--shard cases`) prepares it, and its seeds
  and FID calls are split over that team (seed i to rank i mod N);
- **context parallel**: every rank of the world prepares it in lockstep, makes every call
  with the same seeds (each rank one slice of each call), and none of it is spread by
  `--shard cases`. Its calls are split over a world of one (`calls`): each rank makes all
  of them. Rank 0's share stands for the case: its outputs are the ones every rank holds,
  its FLOPs are already the whole call's, and its reuse counts are the call's (summing
  every rank's would count each call N times).

A case whose `parallel` is refused (no `_cp_plan`, a world of another size, ring on a CPU)
still belongs to the whole world: every rank refuses it alike, and rank 0 records why.
"""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench.core.world import World
from dqar_bench.strategy.context_parallel import Parallel


@dataclass(frozen=True)
class Team:
    """The ranks that prepare, time and record one case together, and the ranks its calls are split over."""

    ranks: World
    """They exchange their shares of the case; its rank 0 scores and records it."""
    calls: World
    """The sampling calls (seeds, FID batches) go to rank i mod `calls.world_size`."""
    spanning: bool = False
    """One call spans every rank (context parallel): they make the same calls at the same time."""


def team_for(parallel: Parallel | None, world: World, group: World) -> Team:
    """The team of a case with context parallelism `parallel` (None: one device per call): the
    run's `group` (`RunContext.group`), or for a context-parallel case the whole world."""
    if parallel is None:
        return Team(group, group)
    return Team(world, World(device=world.device), spanning=world.distributed)


def parallel_note(parallel: Parallel | None, baseline: str, baseline_parallel: Parallel | None) -> str:
    """What a context-parallel case's recorded time is, and what its speedup against `baseline` compares."""
    assert parallel is not None
    if baseline_parallel == parallel:
        against = f"against '{baseline}', split over the same ranks alike: the strategy's gain under context parallelism"
    elif baseline_parallel is None:
        against = (
            f"against '{baseline}' on one device per rank, timed in the same rounds: the gain of {parallel.degree} devices "
            "and the strategy together"
        )
    else:
        against = f"against '{baseline}', split as {baseline_parallel.label()}: the strategy's gain and that of the other split together"
    return (
        f"each call split over {parallel.degree} ranks ({parallel.mode}); its time is rank 0's wall time of one whole call, "
        f"every rank starting it together; speedup {against}"
    )
