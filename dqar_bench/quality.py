"""Paired quality: how far a case's outputs are from the baseline's on the same seeds."""

from __future__ import annotations

import math

import torch


def paired(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float | None]:
    """Max abs difference, MSE and PSNR of `output` against `reference`.

    PSNR uses the reference's own value range as the peak (latents have no fixed range);
    identical outputs give `psnr_db = None` (infinite) and `identical = True`.
    """
    if output.shape != reference.shape:
        raise ValueError(f"outputs of shape {tuple(output.shape)} cannot be compared with {tuple(reference.shape)}")
    out, ref = output.double(), reference.double()
    diff = out - ref
    mse = float(diff.pow(2).mean())
    peak = float(ref.max() - ref.min()) or 1.0
    psnr = None if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)
    return {"max_abs": float(diff.abs().max()), "mse": mse, "psnr_db": psnr, "identical": mse == 0.0}
