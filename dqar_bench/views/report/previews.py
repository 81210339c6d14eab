"""Small pictures of a case's outputs, so a report can show them without the model.

A model with a VAE needs its decoder to turn latents into images, and the report must work
from a finished run alone: so the runner decodes a few outputs at run time and keeps them as
uint8 previews (`RunDir.save_previews`). Pixel-space models (digits-dit: outputs in [-1, 1])
and latents without a VAE need no decoder; the report draws them from the saved outputs.

A preview is `[items, channels, height, width]` or, for video, `[items, channels, frames,
height, width]`, channels 1 or 3: the first `MAX_ITEMS` of the batch, evenly spaced frames,
downscaled to at most `MAX_SIDE` pixels a side, for the first `MAX_SEEDS` seeds.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dqar_bench.measure.fidelity import unit_to_uint8
from dqar_bench.measure.records import RunDir

MAX_SEEDS = 4
MAX_ITEMS = 16
MAX_FRAMES = 8
MAX_SIDE = 128
PIXEL_BUDGET = 4 * 128 * 128
"""Items of a batch kept per seed: as many as fit this many pixels (all ten 8x8 digits, four 128 px
images, one 8-frame 128 px video), at least one."""

Decode = Callable[[torch.Tensor], torch.Tensor]
Previews = tuple[dict[int, torch.Tensor], dict[str, str]]


def decoded_previews(outputs: dict[int, torch.Tensor], decode: Decode) -> dict[int, torch.Tensor]:
    """uint8 previews of the first seeds' outputs, decoded to images in [0, 1] by `decode`."""
    previews = {}
    for seed in sorted(outputs)[:MAX_SEEDS]:
        images = decode(outputs[seed][:MAX_ITEMS])  # a video is decoded whole: a temporal VAE needs every latent frame
        previews[seed] = unit_to_uint8(shrink(images.float().cpu()))
    return previews


def keep_previews(run: RunDir, case: str, outputs: dict[int, torch.Tensor], decode: Decode | None, say: Callable[[str], None]) -> None:
    """Save decoded previews where the model has a VAE; a failure costs the pictures, never the run."""
    if decode is None:
        return  # pixels or plain latents: the report draws them from the saved outputs
    try:
        run.save_previews(case, decoded_previews(outputs, decode), {"space": "image"})
    except Exception as exc:  # noqa: BLE001 - the measured case is already on disk
        say(f"    previews not saved: {type(exc).__name__}: {exc}".splitlines()[0])


def checked_previews(kept: Previews | None) -> Previews | None:
    """Previews as `save_previews` writes them, or ValueError saying what is wrong: a run
    directory travels, and a damaged file must cost its pictures, not the report."""
    if kept is None:
        return None
    tensors, meta = kept
    for seed, t in tensors.items():
        if t.dtype != torch.uint8 or t.dim() not in (4, 5) or t.shape[1] not in (1, 3) or 0 in t.shape:
            raise ValueError(f"seed {seed}: {tuple(t.shape)} {t.dtype}, not uint8 [items, 1 or 3, (frames,) height, width]")
        if max(t.shape[-2:]) > MAX_SIDE or t.shape[0] > MAX_ITEMS or (t.dim() == 5 and t.shape[2] > MAX_FRAMES):
            raise ValueError(f"seed {seed}: {tuple(t.shape)} is larger than a preview is made ({MAX_ITEMS} items, {MAX_SIDE} px)")
    return (tensors, meta) if tensors else None


def shrink(images: torch.Tensor) -> torch.Tensor:
    """Evenly spaced frames (video), the first items that fit PIXEL_BUDGET, at most MAX_SIDE pixels a side."""
    if images.dim() == 5 and images.shape[2] > MAX_FRAMES:
        index = torch.linspace(0, images.shape[2] - 1, MAX_FRAMES).round().long()
        images = images[:, :, index]
    frames = images.shape[2] if images.dim() == 5 else 1
    fit = PIXEL_BUDGET // (min(max(images.shape[-2:]), MAX_SIDE) ** 2 * frames)
    images = images[: max(1, min(MAX_ITEMS, fit))]
    height, width = images.shape[-2:]
    scale = MAX_SIDE / max(height, width)
    if scale >= 1:
        return images
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if images.dim() == 5:
        b, c, f = images.shape[:3]
        flat = images.permute(0, 2, 1, 3, 4).reshape(b * f, c, height, width)
        small = F.interpolate(flat, size=size, mode="bilinear", antialias=True, align_corners=False)
        return small.reshape(b, f, c, *size).permute(0, 2, 1, 3, 4)
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


