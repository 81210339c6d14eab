"""FID / IS / KID over ranks: each rank makes its images and their features, rank 0 scores.

Images are split by sampling call (`measure.instruments.fid_batches`), so each image has
the same seed and label whatever the number of ranks. Only features travel (12 KiB per
image for Inception's pool features and logits, not 192 KiB of pixels); rank 0 puts them
back in the one-process order before scoring, so FID, IS and KID (whose subsets are drawn
by position) are computed on the same set, in the same order, as one process computes them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from dqar_bench.core.world import RankError, World


def gather_features(world: World, features: Mapping[str, torch.Tensor], indices: Sequence[int]) -> dict[str, torch.Tensor] | None:
    """Every rank's features on rank 0, row i = image i of the one-process order (None elsewhere).

    `indices` gives, for each row of this rank's features, its position in that order;
    together the ranks must cover 0..N-1 once each.
    """
    rows = {int(t.shape[0]) for t in features.values()}
    if features and rows != {len(indices)}:
        raise ValueError(f"features have {sorted(rows)} rows for {len(indices)} images")
    parts = world.gather((list(indices), {k: v.detach().cpu() for k, v in features.items()}), "gather FID features")
    return None if parts is None else merge_features(parts)


def merge_features(parts: Sequence[tuple[Sequence[int], Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Every rank's (positions, features), rank order, as one set in the one-process order."""
    order = [i for idx, _ in parts for i in idx]
    if sorted(order) != list(range(len(order))):
        duplicated = len(order) - len(set(order))
        raise RankError(f"the ranks sent FID features for {len(order)} images, {duplicated} of them twice or with gaps; every rank must use the same count and batch")
    given = [f for idx, f in parts if idx]
    if not given:
        return {}
    layers = set(given[0])
    if any(set(f) != layers for f in given):
        raise RankError(f"the ranks made different feature layers ({[sorted(f) for f in given]}); every rank needs the same feature extractor and metrics")
    position = torch.tensor(order).argsort()
    return {layer: torch.cat([f[layer] for f in given])[position] for layer in sorted(layers)}

