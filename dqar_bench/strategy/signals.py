"""Cheap signals that gates read: latent SNR, latent norm, attention entropy, residual change.

They stay on the device; the strategy gathers the ones its gate asked for into one
tensor and moves it to the host once per step (at most one synchronisation per step).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

EPS = 1e-8

SNR = "snr"
LATENT_NORM = "latent_norm"
ENTROPY = "entropy"
RESIDUAL_CHANGE = "residual_change"
MODULATION_CHANGE = "modulation_change"
"""The relative L1 change of block 0's timestep-modulated input since the previous step (TeaCache)."""
KNOWN = frozenset({SNR, LATENT_NORM, ENTROPY, RESIDUAL_CHANGE, MODULATION_CHANGE})

SNR_SOURCES = ("schedule", "x0")
"""Where a gate's SNR comes from: the noise schedule at the step (the default, the same
number for the same noise level on every family), or the seed's estimate from the
sampler's predicted x0 (`latent_snr`)."""
ENTROPY_UNITS = ("normalised", "nats")
"""How a gate's entropy is scaled: `H / log(N_keys)` in [0, 1] (the default, one threshold
across blocks, resolutions and models), or the seed's nats."""


def schedule_snr(alpha_bar: float, sigma: float | None = None) -> float:
    """The noise schedule's SNR at a step: `((1 - sigma) / sigma)^2` for flow matching
    (x_t = (1 - sigma) x0 + sigma noise), else `alpha_bar / (1 - alpha_bar)`; inf where the
    noise is gone. A host float: no device work, no synchronisation."""
    if sigma is not None:
        return ((1.0 - sigma) / sigma) ** 2 if sigma > 0 else math.inf
    return alpha_bar / (1.0 - alpha_bar) if alpha_bar < 1 else math.inf


def snr_source(gate: object) -> str:
    """The SNR source a gate asked for (`snr` parameter; 'schedule' when it has none)."""
    return getattr(gate, "snr", SNR_SOURCES[0])


def entropy_unit(gate: object) -> str:
    """The entropy unit a gate asked for (`entropy` parameter; 'normalised' when it has none)."""
    return getattr(gate, "entropy", ENTROPY_UNITS[0])


def latent_snr(latents: torch.Tensor, x0: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """`||x0||^2 / (||x_t - x0||^2 + eps)`: how much of the latent is already signal."""
    x0 = x0.float()
    return x0.pow(2).sum() / ((latents.float() - x0).pow(2).sum() + eps)


def latent_norm(latents: torch.Tensor) -> torch.Tensor:
    """`||x_t||_2` over the whole batch."""
    return latents.float().norm()


def attention_entropy(q: torch.Tensor, k: torch.Tensor, num_queries: int = 16) -> torch.Tensor:
    """Mean entropy of attention rows, `-1/(H*T) sum_h sum_ij A log A`, from sampled queries.

    Only `num_queries` evenly spaced query rows are used (all rows when `num_queries` is 0
    or at least the token count), so the probe costs a sliver of the attention it measures.
    Inputs are [batch, heads, tokens, head_dim]; the result is a 0-d float32 tensor,
    averaged over batch, heads and sampled rows. (`EntropyProbe` computes the same for
    every block of a step at once; this is the one-block form.)
    """
    return scores_entropy(sampled_scores(q, k, num_queries).unsqueeze(0))[0]


def sampled_scores(
    q: torch.Tensor, k: torch.Tensor, num_queries: int, out: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """Scaled attention scores `q k^T * scale` (default `1 / sqrt(d)`) of the sampled query rows, [..., rows, keys]."""
    tokens = q.shape[-2]
    if 0 < num_queries < tokens:
        q = q.index_select(-2, query_rows(tokens, num_queries, q.device))
    return torch.matmul(q * (q.shape[-1] ** -0.5 if scale is None else scale), k.transpose(-1, -2), out=out)


def sampled_log_kernel(q: torch.Tensor, k: torch.Tensor, num_queries: int) -> torch.Tensor:
    """`log(relu(q) relu(k)^T)` of the sampled query rows: linear attention's scores.

    A ReLU linear attention (Sana's `SanaLinearAttnProcessor2_0`) weights key j of query i
    by `relu(q_i).relu(k_j) / sum_j relu(q_i).relu(k_j)`, which is the softmax of these
    scores, so `scores_entropy` of them is the entropy of the map the model really applies
    (not of a softmax map it never forms). A zero weight is kept as a very low score.
    """
    tokens = q.shape[-2]
    if 0 < num_queries < tokens:
        q = q.index_select(-2, query_rows(tokens, num_queries, q.device))
    weights = torch.matmul(torch.relu(q.float()), torch.relu(k.float()).transpose(-1, -2))
    return weights.clamp_min(torch.finfo(torch.float32).tiny).log().to(q.dtype)


def linear_attention(attn: torch.nn.Module) -> bool:
    """`attn` attends with a ReLU kernel instead of a softmax (Sana's self-attention)."""
    return "LinearAttnProcessor" in type(getattr(attn, "processor", None)).__name__


def scores_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Per leading index, the mean row entropy of `softmax(scores)`, in float32.

    Computed as `-sum p log p` with `log p` from `log_softmax`, so no epsilon is needed:
    finite scores give a finite `log p`, and where `p` underflows to 0 the term is 0. A NaN
    score (a slot never written) gives NaN.
    """
    log_probs = torch.log_softmax(scores, dim=-1, dtype=torch.float32)
    rows = log_probs[0].numel() // log_probs.shape[-1]
    return (log_probs.exp() * log_probs).flatten(1).sum(dim=1) / -rows


class EntropyProbe:
    """Attention entropy of every block: recorded where blocks compute, read once per step.

    Eager DiT is launch-bound, so the probe is split to keep its kernels few: `record` costs
    a computing block two or three (row pick, scale, scores written into the block's slot of
    one buffer), and `entropies` turns the whole buffer into one entropy per block with a
    few more, once per step, whatever the number of blocks. A slot keeps its scores until
    the block records again, so each block reads the entropy of its last compute; a slot
    never written reads NaN. The buffer is kept, refilled with NaN, from call to call while
    the shapes stay the same, so a captured CUDA graph can keep writing into it.

    Blocks whose attention has another shape get a buffer of their own; `entropies` merges
    them, each block having a value in one of them only. Normalised (the default), each
    buffer's entropies are divided by the log of its key count, so blocks that attend over
    different numbers of keys read on one scale: 1 is uniform attention, 0 one key.
    """

    def __init__(self, num_queries: int = 16, normalised: bool = True) -> None:
        self.num_queries = num_queries
        self.normalised = normalised
        """Entropies divided by log(N_keys), N_keys the keys each row attends over (`key_count`)."""
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = scores_entropy
        """Scores to entropies: `scores_entropy`, or its reduction over ranks that each hold some keys."""
        self.key_count: Callable[[int], int] = int
        """The keys a row attends over, from the keys one buffer holds (more where ranks each hold some)."""
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._read: dict[tuple, torch.Tensor] = {}
        """Per buffer, each block's entropy as `entropies` last read it (kept for blocks not recorded since)."""
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}
        self._num_blocks = 0
        self._device: torch.device | None = None

    def reset(self, num_blocks: int, device: torch.device) -> None:
        """Forget every block's scores (start of a sampling call)."""
        self._num_blocks, self._device = num_blocks, torch.device(device)
        self._read.clear()
        for key in list(self._buffers):
            if self._buffers[key].shape[0] != num_blocks:
                del self._buffers[key]
            else:
                self._buffers[key].fill_(float("nan"))

    def record(
        self, block: int, q: torch.Tensor, k: torch.Tensor, linear: bool = False,
        scale: float | None = None, mask: torch.Tensor | None = None,
    ) -> None:
        """Keep the sampled scores of `block`'s self-attention (q, k: [batch, heads, tokens, head_dim]).

        `linear`: the block attends with a ReLU kernel (`linear_attention`); its scores are
        then `log(relu(q) relu(k)^T)`, whose softmax is the kernel's normalised weights.
        `scale` and `mask` are what the attention was called with (SDPA's meaning: a bool
        mask keeps the keys where it is True, a float mask is added to the scores).
        """
        rows = min(self.num_queries, q.shape[-2]) if self.num_queries > 0 else q.shape[-2]
        shape = (self._num_blocks, *q.shape[:-2], rows, k.shape[-2])
        key = (shape, q.dtype, q.device)
        scores = self._buffers.get(key)
        if scores is None:
            scores = self._buffers[key] = torch.full(shape, float("nan"), dtype=q.dtype, device=q.device)
        if linear:
            scores[block] = sampled_log_kernel(q, k, self.num_queries)
        else:
            sampled_scores(q, k, self.num_queries, out=scores[block], scale=scale)
        if mask is not None:
            _apply_mask(scores[block], mask, q.shape[-2], self.num_queries)

    def entropies(self, fresh: Sequence[int] | None = None) -> torch.Tensor:
        """One float32 entropy per block, NaN for a block not recorded in this call.

        `fresh`: the blocks recorded since the last read (None: any may have been). Only
        those are computed again; the others keep the value they read then, which is what
        their unchanged scores give. On a small model the entropy is most of what deciding
        costs per step, and a step records few blocks (reused ones and those the scheduler
        or the gate's window leave out do not): digits-dit's full_dqar recomputes about 2 of
        6 blocks per read. The strategy names them from its own probe pattern, not from
        `record` calls, which a replayed CUDA graph makes without running Python.
        """
        if not self._buffers:
            return torch.full((self._num_blocks,), float("nan"), device=self._device)
        merged: torch.Tensor | None = None
        for key, scores in self._buffers.items():
            each = self._read.get(key)
            if each is None or fresh is None or len(fresh) == self._num_blocks:
                each = self._read[key] = self._entropy(scores)
            elif fresh:
                rows = self._block_rows(tuple(fresh), scores.device)
                each.index_copy_(0, rows, self._entropy(scores.index_select(0, rows)))
            merged = each if merged is None else torch.fmax(merged, each)  # NaN where a block is not in this buffer
        return merged.clone()  # type: ignore[union-attr]

    def _entropy(self, scores: torch.Tensor) -> torch.Tensor:
        each = self.reduce(scores)
        keys = self.key_count(scores.shape[-1])
        return each / math.log(keys) if self.normalised and keys > 1 else each

    def _block_rows(self, blocks: tuple[int, ...], device: torch.device) -> torch.Tensor:
        rows = self._rows.get(blocks)
        if rows is None or rows.device != device:
            if len(self._rows) >= 256:  # subsets of many blocks: keep the made ones few
                self._rows.clear()
            rows = self._rows[blocks] = torch.tensor(blocks, dtype=torch.long, device=device)
        return rows


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor, tokens: int, num_queries: int) -> None:
    """`mask`'s sampled rows applied to `scores` in place, as SDPA applies it to the full map.

    A masked key gets the lowest finite score, not -inf: its weight is still 0, and its
    term in `-sum p log p` is 0 * (a finite number) = 0 instead of 0 * -inf = NaN."""
    if mask.dim() >= 2 and mask.shape[-2] > 1 and 0 < num_queries < tokens:
        mask = mask.index_select(-2, query_rows(tokens, num_queries, mask.device))
    lowest = torch.finfo(scores.dtype).min
    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, lowest)
    else:
        scores.add_(mask.to(scores.dtype)).clamp_min_(lowest)


class SdpaTap:
    """Reads the q and k a block's own attention processor hands to SDPA: no second projection.

    A processor the harness does not replace (joint text-image attention, rotary embeddings,
    Wan's, SD3's) forms its queries and keys, with their norms, rotary embeddings and
    text tokens, and calls `torch.nn.functional.scaled_dot_product_attention` (directly, or
    through diffusers' native attention backend). `run` swaps that function for the one
    call of the module it runs, records the sampled scores of the first SDPA call into the
    probe (all keys: on joint attention the text and image keys every query attends to;
    the query rows sampled evenly over the joint sequence), and puts the function back.
    The model computes exactly what it would (the real SDPA runs on the same tensors).
    Returns whether it saw an SDPA call, so a processor that never calls it (linear
    attention, custom kernels) can be probed another way.
    """

    def __init__(self, probe: EntropyProbe) -> None:
        self.probe = probe
        self._block = -1
        self._real = torch.nn.functional.scaled_dot_product_attention

    def run(self, block: int, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, bool]:
        """`call(*args, **kwargs)` with `block`'s SDPA recorded; its output and whether SDPA ran."""
        functional = torch.nn.functional
        self._real = real = functional.scaled_dot_product_attention
        self._block = block
        functional.scaled_dot_product_attention = self._sdpa
        try:
            out = call(*args, **kwargs)
        finally:
            functional.scaled_dot_product_attention = real
        seen, self._block = self._block == -1, -1
        return out, seen

    def _sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._block >= 0:
            k = key
            if k.shape[-3] != query.shape[-3]:  # grouped-query attention: each key head serves several query heads
                k = k.repeat_interleave(query.shape[-3] // k.shape[-3], dim=-3)
            scale = kwargs.get("scale", args[2] if len(args) > 2 else None)
            self.probe.record(self._block, query, k, scale=scale, mask=attn_mask)
            self._block = -1
        return self._real(query, key, value, attn_mask, *args, **kwargs)


def probe_qk(
    attn: torch.nn.Module, x: torch.Tensor, num_queries: int = 0, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys of `attn` on its own input `x`, [batch, heads, tokens, head_dim], for the probe.

    The fallback where the processor's own SDPA call cannot be read (`SdpaTap`: linear
    attention, a processor without SDPA, a compiled forward, a sequence split over ranks):
    the probe projects the module's `hidden_states` input with its own
    `to_q`/`to_k` and query/key norms, without rotary embeddings and without the text
    tokens a joint processor appends: the image tokens' attention among themselves (on
    FLUX's single-stream blocks, whose input is the joint sequence, over text and image
    tokens). The model's output is untouched. Only the `num_queries` sampled rows are
    projected to queries (the query norms act per token, so this is exact): the probe
    costs the key projection and a few query rows where it runs. `rows`, where given, are
    the token indices to project to queries instead (a rank's share of the sampled rows).
    """
    tokens = x.shape[-2]
    if rows is not None:
        picked = x.index_select(-2, rows)
    else:
        picked = x.index_select(-2, query_rows(tokens, num_queries, x.device)) if 0 < num_queries < tokens else x
    q, k = attn.to_q(picked), attn.to_k(x)
    heads = attn.heads
    norm_q, norm_k = getattr(attn, "norm_q", None), getattr(attn, "norm_k", None)
    if norm_q is not None and heads > 1 and _norm_width(norm_q) == q.shape[-1]:
        q, k = norm_q(q), norm_k(k)  # one norm across all heads (Wan)
        norm_q = norm_k = None
    q, k = q.unflatten(-1, (heads, -1)), k.unflatten(-1, (heads, -1))
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q.transpose(1, 2), k.transpose(1, 2)


def _norm_width(norm: torch.nn.Module) -> int | None:
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    if shape is None:
        weight = getattr(norm, "weight", None)
        return int(weight.shape[-1]) if weight is not None else None
    return int(shape[-1]) if isinstance(shape, (tuple, list, torch.Size)) else int(shape)


@functools.lru_cache(maxsize=32)
def query_rows(tokens: int, num_queries: int, device: torch.device) -> torch.Tensor:
    """Indices of `num_queries` evenly spaced rows, made once per shape and device.

    Evenly spaced, the same rows for every head and batch item: on the tiny models (16 of 28
    joint rows) rows at stratum midpoints, rows rotated per head, or random subsets give no
    lower error (flux-tiny's row entropies differ per head, so a rotation samples no common
    part away); the error is the rows' spread, which more rows reduce, not another pattern.
    """
    return torch.linspace(0, tokens - 1, num_queries, device=device).round().long()


def residual_change(residual: torch.Tensor, reference: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """`mean|r - r_ref| / mean|r_ref|`: how far a block's residual moved since the reference.

    FirstBlockCache's signal (ParaAttention; diffusers' `apply_first_block_cache`): measured
    on block 0 inside the forward, so a gate reading it decides mid-forward (see
    `Gate.DECIDES_AFTER_BLOCK`).
    """
    return (residual.float() - reference.float()).abs().mean() / (reference.float().abs().mean() + eps)
