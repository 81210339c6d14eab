"""A case prepared by several ranks: what each rank sends rank 0, and how rank 0 joins them.

Under data parallelism every rank prepares every case, but scores only its share of the
sampling calls: seed i of the suite goes to rank i mod N (`World.shard`), FID call k to
rank k mod N (`measure.instruments.fid_batches`), so each output has the seed it has in
one process. Each rank then sends rank 0 one `Share`: its outputs (final latents, small),
FLOP counts and reuse counts of those calls, the features of its FID images (never the
images), its blocked timing rounds, and whether it failed. Rank 0 joins the shares into
exactly what one process would have measured (outputs by seed, FLOPs by seed, reuse counts
summed, FID features in the one-process order) and scores them; a failure on any rank
fails the case on every rank, with the rank named.

A context-parallel case is different (`dqar_bench.runs.distributed.teams`): every rank made
every call, each a slice of it, so rank 0's share alone stands (`standing`), once it is
checked that every rank ended with the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from dqar_bench.measure.flops import FlopCount
from dqar_bench.runs.distributed.fid import merge_features


@dataclass
class Share:
    """One rank's part of one case's preparation."""

    rank: int
    device: str
    status: str = "pending"
    """'ready', 'failed' or 'unsupported' (the last is the same on every rank)."""
    error: str | None = None
    traceback: str | None = None
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    flops: dict[int, FlopCount] = field(default_factory=dict)
    reuse: dict[str, Any] | None = None
    fid_indices: list[int] = field(default_factory=list)
    fid_features: dict[str, torch.Tensor] = field(default_factory=dict)
    rounds: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """Blocked timing rounds: (round id, what the case timed in it)."""
    cold_s: float | None = None


def settle(shares: Sequence[Share], distributed: bool) -> tuple[str, str | None, str | None]:
    """The case's status over all ranks: unsupported or failed if any rank says so (that rank named), else ready."""
    for wanted in ("unsupported", "failed"):
        for share in shares:
            if share.status == wanted:
                error = f"rank {share.rank}: {share.error}" if distributed and wanted == "failed" else share.error
                return wanted, error, share.traceback
    return "ready", None, None


def standing(shares: Sequence[Share], spanning: bool) -> list[Share]:
    """The shares whose calls the case's record counts: every rank's, or for calls that span
    the ranks rank 0's alone, after checking that every rank holds its outputs bit for bit
    (diffusers gathers one output for all; a difference means the ranks ran different calls)."""
    if not spanning:
        return list(shares)
    first = shares[0]
    for other in shares[1:]:
        for seed, latents in first.outputs.items():
            theirs = other.outputs.get(seed)
            if theirs is None or not torch.equal(theirs, latents):
                raise RuntimeError(
                    f"context parallelism: rank {other.rank}'s outputs of seed {seed} differ from rank 0's; the ranks did not run the same calls"
                )
    return [first]


def merge_reuse(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Reuse counts of all ranks' scored calls, as one process counting every call would have them."""
    given = [p for p in parts if p is not None]
    if not given:
        return {"reused": 0, "evaluations": 0, "reuse_ratio": 0.0, "cache_bytes": 0, "reuse_map": None, "reuse_map_calls": 0, "nonfinite_cached": 0}
    maps = [p["reuse_map"] for p in given if p["reuse_map"]]
    steps = max((len(m) for m in maps), default=0)
    width = max((len(row) for m in maps for row in m), default=0)
    summed = [[sum(m[t][b] if t < len(m) and b < len(m[t]) else 0 for m in maps) for b in range(width)] for t in range(steps)]
    reused, evaluations = sum(p["reused"] for p in given), sum(p["evaluations"] for p in given)
    return {
        "reused": reused,
        "evaluations": evaluations,
        "reuse_ratio": reused / evaluations if evaluations else 0.0,
        "cache_bytes": max(p["cache_bytes"] for p in given),
        "reuse_map": summed if maps else None,
        "reuse_map_calls": sum(p["reuse_map_calls"] for p in given),
        "nonfinite_cached": sum(p["nonfinite_cached"] for p in given),
    }


def merge_outputs(shares: Sequence[Share], seeds: Sequence[int]) -> dict[int, torch.Tensor]:
    """Every seed's outputs, in the suite's seed order."""
    found = {seed: out for share in shares for seed, out in share.outputs.items()}
    return {seed: found[seed] for seed in seeds}


def merge_flops(shares: Sequence[Share], seeds: Sequence[int]) -> dict[int, FlopCount]:
    found = {seed: count for share in shares for seed, count in share.flops.items()}
    return {seed: found[seed] for seed in seeds}


def merge_fid(shares: Sequence[Share]) -> dict[str, torch.Tensor] | None:
    """The FID features of every rank in the one-process order; None when the case made no FID images."""
    if not any(s.fid_indices for s in shares):
        return None
    return merge_features([(s.fid_indices, s.fid_features) for s in shares])


def rank_entries(entries: Sequence[dict[str, Any]], rank: int) -> list[dict[str, Any]]:
    """The round lines that `rank` timed (a line without `rank`, from a one-process run, is rank 0's)."""
    return [e for e in entries if int(e.get("rank", 0)) == rank]
