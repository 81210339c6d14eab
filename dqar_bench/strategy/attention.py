"""Self-attention computed by the harness, step by step, so caches can keep Q, K or V.

It follows diffusers' `AttnProcessor2_0` operation for operation, so a block that goes
through this path computes bit for bit what the model's own processor computes; the
`kv` cache's "no reuse equals the baseline" test depends on that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def project_q(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Queries as [batch, heads, tokens, head_dim]."""
    x = _pre_norm(attn, x)
    q = attn.to_q(x)
    q = q.view(x.shape[0], -1, attn.heads, q.shape[-1] // attn.heads).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    return q


def project_qkv(attn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of self-attention, each [batch, heads, tokens, head_dim]."""
    _check_supported(attn, x)
    x = _pre_norm(attn, x)
    batch = x.shape[0]
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    head_dim = k.shape[-1] // attn.heads
    q = q.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    k = k.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    v = v.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attend(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention and the output projection; `residual` is the block input."""
    batch, heads, _, head_dim = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(q.dtype)
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _pre_norm(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    return x


def _check_supported(attn: torch.nn.Module, x: torch.Tensor) -> None:
    if x.ndim != 3 or attn.spatial_norm is not None:
        raise NotImplementedError("the harness's attention path supports token inputs [batch, tokens, dim] only")
