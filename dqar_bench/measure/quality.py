"""Paired quality: how far a case's outputs are from the baseline's on the same seeds.

MSE and max-abs are always taken on the latents (the sampler's own output). PSNR and
SSIM are taken on decoded images where the model has a VAE (images in [0, 1], peak 1) and
on the latents otherwise (peak = the reference's value range, since latents have no fixed
range); the record's `space` says which. LPIPS (`measure.lpips`) is computed on decoded
images when the suite names its weights (`quality.lpips`; nothing is downloaded);
otherwise `lpips` is None and `lpips_note` says why, and the table leaves the column out
with that note. CLIP score (`measure.clip_score`) is not paired: each case's images against
their prompts.

Distributional quality (FID, IS, KID against a reference set) is in `measure.fidelity`;
its settings travel with the paired ones in `QualityConfig` (the suite's `quality:` key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from dqar_bench.measure.lpips import LpipsConfig, LpipsScorer


@dataclass(frozen=True)
class QualityConfig:
    """The suite's `quality:` mapping."""

    fid: int = 0
    """Images generated per case for FID / IS / KID; 0 turns distributional quality off."""
    reference: str = "baseline"
    """An image folder, a `.npz` of FID statistics (mu, sigma), or 'baseline' (the baseline
    case's own generated images, on the same seeds and labels)."""
    metrics: tuple[str, ...] = ("fid", "kid", "isc")
    feature_extractor: str = "inception-v3-compat"
    """Any feature extractor registered with torch-fidelity."""
    inception_weights: str | None = None
    """Local weights file for the feature extractor (torch-fidelity's
    `feature_extractor_weights_path`); nothing is downloaded."""
    lpips: LpipsConfig | None = None
    """LPIPS on decoded images against the baseline's, from these local weights; None: off."""
    clip: str | None = None
    """A local CLIP checkpoint folder (transformers layout): CLIP score of every case's images
    against their prompts; None: off."""
    classifier: str | None = None
    """A label classifier (`dqar_bench.measure.classify.CLASSIFIERS`) that scores the case's
    outputs (every seed) by class accuracy: the share read as the label they were made for."""


def paired(output: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Max abs difference, MSE, PSNR and SSIM of `output` against `reference`.

    PSNR uses the reference's own value range as the peak (latents have no fixed range);
    identical outputs give `psnr_db = None` (infinite) and `identical = True`.
    """
    if output.shape != reference.shape:
        raise ValueError(f"outputs of shape {tuple(output.shape)} cannot be compared with {tuple(reference.shape)}")
    out, ref = output.double(), reference.double()
    diff = out - ref
    mse = float(diff.pow(2).mean())
    peak = float(ref.max() - ref.min()) or 1.0
    return {
        "max_abs": float(diff.abs().max()),
        "mse": mse,
        "psnr_db": _psnr(mse, peak),
        "ssim": ssim(out, ref, peak),
        "identical": mse == 0.0,
        "space": "latent",
    }


def paired_images(images: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """PSNR and SSIM of decoded images in [0, 1] (peak 1)."""
    out, ref = images.double(), reference.double()
    mse = float((out - ref).pow(2).mean())
    return {"psnr_db": _psnr(mse, 1.0), "ssim": ssim(out, ref, 1.0), "image_mse": mse}


def compare_outputs(
    output: torch.Tensor,
    reference: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lpips: LpipsScorer | None = None,
    lpips_note: str | None = None,
) -> dict[str, Any]:
    """The `quality` field of a record: latents always, decoded images where `decode` is given
    (LPIPS reads a video as its frames)."""
    result = paired(output, reference)
    if decode is not None:
        images, ref_images = decode(output), decode(reference)
        result["latent_psnr_db"], result["latent_ssim"] = result["psnr_db"], result["ssim"]
        result.update(paired_images(images, ref_images), space="image")
        frames, ref_frames = _as_images(images), _as_images(ref_images)
        refusal = lpips.refusal(frames) if lpips is not None else lpips_note
        if lpips is not None and refusal is None:
            result["lpips"], result["lpips_note"] = lpips(frames, ref_frames), None
        else:
            result["lpips"], result["lpips_note"] = None, refusal
    else:
        result["lpips"] = None
        result["lpips_note"] = "not computed: LPIPS needs decoded RGB images and this model has no VAE"
    return result


def ssim(output: torch.Tensor, reference: torch.Tensor, data_range: float) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over
    images and channels. The window shrinks to the image on tiny inputs (8x8 latents)."""
    x, y = _as_images(output), _as_images(reference)
    size = min(11, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, size, size).to(x)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def decoder(vae: torch.nn.Module, batch_size: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """Latents -> images (or videos) in [0, 1] on the CPU, through `vae`, unscaled as its pipeline does.

    A VAE with per-channel `latents_mean`/`latents_std` (Wan's) takes x * std + mean; any
    other x / scaling_factor (+ shift_factor where it has one: SD3, FLUX).
    """
    config = getattr(vae, "config", None)
    scale = float(getattr(config, "scaling_factor", None) or 0.18215)
    shift = getattr(config, "shift_factor", None)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    param = next(vae.parameters())

    def unscale(x: torch.Tensor) -> torch.Tensor:
        if mean is not None and std is not None:
            view = (1, -1) + (1,) * (x.dim() - 2)
            return x * torch.tensor(std, device=x.device, dtype=x.dtype).view(view) + torch.tensor(mean, device=x.device, dtype=x.dtype).view(view)
        x = x / scale
        return x + shift if shift is not None else x

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        chunks = []
        for chunk in latents.split(batch_size):
            image = vae.decode(unscale(chunk.to(param.device, param.dtype))).sample
            chunks.append(((image.float().clamp(-1, 1) + 1) / 2).cpu())
        return torch.cat(chunks)

    return decode


def _as_images(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) as is; (C, H, W) as one image; video (B, C, F, H, W) as B * F frames."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        return t.unsqueeze(0)
    if t.dim() == 5:
        return t.transpose(1, 2).flatten(0, 1)
    raise ValueError(f"SSIM needs (B, C, H, W), (C, H, W) or video (B, C, F, H, W) tensors, got shape {tuple(t.shape)}")


def _psnr(mse: float, peak: float) -> float | None:
    return None if mse == 0.0 else 10.0 * math.log10(peak**2 / mse)
