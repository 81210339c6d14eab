"""Cheap signals that gates read: latent SNR, latent norm and attention entropy.

They stay on the device; the strategy gathers the ones its gate asked for into one
tensor and moves it to the host once per step (at most one synchronisation per step).
"""

from __future__ import annotations

import math

import torch

EPS = 1e-8

SNR = "snr"
LATENT_NORM = "latent_norm"
ENTROPY = "entropy"
KNOWN = frozenset({SNR, LATENT_NORM, ENTROPY})


def latent_snr(latents: torch.Tensor, x0: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """`||x0||^2 / (||x_t - x0||^2 + eps)`: how much of the latent is already signal."""
    x0 = x0.float()
    return x0.pow(2).sum() / ((latents.float() - x0).pow(2).sum() + eps)


def latent_norm(latents: torch.Tensor) -> torch.Tensor:
    """`||x_t||_2` over the whole batch."""
    return latents.float().norm()


def attention_entropy(q: torch.Tensor, k: torch.Tensor, num_queries: int = 16, eps: float = EPS) -> torch.Tensor:
    """Mean entropy of attention rows, `-1/(H*T) sum_h sum_ij A log(A + eps)`, from sampled queries.

    Only `num_queries` evenly spaced query rows are used (all rows when `num_queries` is 0
    or at least the token count), so the probe costs a sliver of the attention it measures.
    Inputs are [batch, heads, tokens, head_dim]; the result is a 0-d tensor, averaged over
    batch, heads and sampled rows.
    """
    tokens = q.shape[-2]
    if 0 < num_queries < tokens:
        index = torch.linspace(0, tokens - 1, num_queries, device=q.device).round().long()
        q = q.index_select(-2, index)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = scores.softmax(dim=-1)
    return -(probs * (probs + eps).log()).sum(dim=-1).mean()
