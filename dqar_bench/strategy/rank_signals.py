"""A gate's signals when its data is split across ranks, and decisions every rank shares.

Under data parallelism each rank holds part of the batch; under context parallelism part
of the sequence (ring attention: a slice of the keys; Ulysses: all tokens of some heads).
A gate that read only its own rank's part would decide differently on each rank, and the
ranks of one sampling call would run different operations. So either every rank reads the
global signal, reduced here to equal the unsplit one up to float rounding, or one rank
decides and the others take its decision (`main_decides`).

The entropy over sharded keys reduces softmax statistics instead of probabilities: the
global row maximum m (all_reduce max), then Z = sum exp(s - m) and S = sum exp(s - m)(s - m)
(all_reduce sum), and H = log Z - S / Z, which is -sum p log p of the whole row.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dqar_bench.core.world import World
from dqar_bench.strategy.signals import EPS, query_rows, sampled_scores


def global_snr(world: World, latents: torch.Tensor, x0: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """`latent_snr` of the whole batch when each rank holds a slice of it.

    Sums `||x0||^2` and `||x_t - x0||^2` over ranks before dividing (a mean of per-rank
    ratios would not be the batch's SNR). On one process it is `latent_snr` exactly.
    """
    x0 = x0.float()
    sums = torch.stack([x0.pow(2).sum(), (latents.float() - x0).pow(2).sum()])
    world.all_reduce(sums, "sum", "SNR sums")
    return sums[0] / (sums[1] + eps)


def key_sharded_entropy(world: World, scores: torch.Tensor) -> torch.Tensor:
    """`scores_entropy` of score rows whose keys (last dimension) are split across ranks.

    `scores` is [leading, ..., rows, local keys], the same rows on every rank; the result
    is one float32 mean row entropy per leading index, on every rank. A NaN score gives NaN.
    """
    s = scores.float()
    if s.shape[-1]:
        peak = s.amax(dim=-1, keepdim=True)
    else:  # a rank that holds no keys contributes nothing
        peak = torch.full((*s.shape[:-1], 1), float("-inf"), device=s.device)
    world.all_reduce(peak, "max", "entropy row maxima")
    shifted = s - peak
    weights = shifted.exp()
    # where a weight underflows to 0 its term is 0 (not 0 * -inf)
    terms = torch.where(weights > 0, weights * shifted, torch.zeros((), device=s.device))
    sums = torch.stack([weights.sum(dim=-1), terms.sum(dim=-1)])
    world.all_reduce(sums, "sum", "entropy softmax sums")
    z, weighted = sums[0], sums[1]
    rows = z[0].numel()
    return (z.log() - weighted / z).flatten(1).sum(dim=1) / rows


def head_sharded_entropy(world: World, scores: torch.Tensor) -> torch.Tensor:
    """`scores_entropy` when each rank holds whole rows of some heads (Ulysses attention).

    `scores` is [leading, batch, local heads, rows, keys]; rows differ between ranks, so the
    mean is the sum of row entropies over all ranks divided by the number of rows over all ranks.
    """
    rows = scores[0].numel() // scores.shape[-1]
    log_probs = torch.log_softmax(scores, dim=-1, dtype=torch.float32)
    row_sums = (log_probs.exp() * log_probs).flatten(1).sum(dim=1).neg()
    packed = torch.cat([row_sums, torch.tensor([float(rows)], device=row_sums.device)])
    world.all_reduce(packed, "sum", "entropy row sums")
    return packed[:-1] / packed[-1]


def sampled_queries(world: World, q: torch.Tensor, offset: int, tokens: int, num_queries: int) -> torch.Tensor:
    """The probe's sampled query rows of the whole sequence, on every rank.

    `q` is this rank's contiguous slice [batch, heads, local tokens, head_dim], starting at
    token `offset` of `tokens`; the rows are the ones `attention_entropy` samples from the
    unsplit sequence. Each row is held by one rank and zero elsewhere, so a sum rebuilds
    it exactly.
    """
    rows = query_rows(tokens, num_queries, q.device) if 0 < num_queries < tokens else torch.arange(tokens, device=q.device)
    mine = (rows >= offset) & (rows < offset + q.shape[-2])
    out = torch.zeros((*q.shape[:-2], rows.numel(), q.shape[-1]), dtype=q.dtype, device=q.device)
    out[..., mine, :] = q.index_select(-2, rows[mine] - offset)
    return world.all_reduce(out, "sum", "sampled queries")


def key_sharded_attention_entropy(world: World, q_rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`attention_entropy` of the given query rows against keys split across ranks (ring attention)."""
    return key_sharded_entropy(world, sampled_scores(q_rows, k, 0).unsqueeze(0))[0]


def main_decides(world: World, decisions: Sequence[bool]) -> list[bool]:
    """Rank 0's reuse decisions on every rank: each rank passes its own, rank 0's win.

    One broadcast of a small tensor per step, on the device of the run (so NCCL carries it
    on GPUs); on one process the decisions come back unchanged.
    """
    if not world.distributed:
        return list(decisions)
    flags = torch.tensor([bool(d) for d in decisions], dtype=torch.uint8, device=world.device)
    return [bool(f) for f in world.broadcast_tensor(flags, "reuse decisions").tolist()]
