"""Calling conventions: how a family's transformer takes latents and gives its prediction.

The sampler keeps latents in one layout for every family, `[batch, channels, height,
width]` for images and `[batch, channels, frames, height, width]` for video, and a
convention converts at the model's door, as each family's diffusers pipeline prepares
its inputs:

- `image` (DiT, PixArt, SD3): the latents as they are; the prediction's first `channels`
  channels (DiT's learned-sigma channels are dropped).
- `video` (Wan, HunyuanVideo): the same for 5-D latents.
- `frames-first` (CogVideoX): `[batch, frames, channels, h, w]` in and out; its noise is
  drawn in that layout (as its pipeline draws it); 3-D RoPE as `CogVideoXPipeline` makes it.
- `packed` (FLUX): 2x2 latent patches packed into tokens `[batch, h/2 * w/2, 4 * channels]`
  with their `img_ids` and zero `txt_ids`, and the timestep divided by 1000 (FLUX's
  embedding multiplies it back), as `FluxPipeline` does.

`latent_shape` is the per-image latent shape: from the transformer's config where it says
(`sample_size`, CogVideoX's `sample_frames`/`sample_height`/`sample_width`; a built-in model
registers `sample_size` and `sample_frames` into its config), else the family's default
resolution. `image_tokens` is what the pipelines feed `calculate_shift` for dynamic shifting.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from dqar_bench.core.errors import ModelError
from dqar_bench.model.families import Family


class Convention:
    """The `image` convention; the others override what differs."""

    frames = False

    def latent_shape(self, config: Any, family: Family) -> tuple[int, ...]:
        channels = int(config.in_channels)
        size = _config_size(config) or tuple(family.latent_size[-2:])
        if len(size) != 2:
            raise ModelError(f"the transformer's config has no sample_size and family '{family.name}' names no latent_size")
        if self.frames:
            frames = getattr(config, "sample_frames", None) or (family.latent_size[0] if len(family.latent_size) == 3 else 1)
            return (channels, int(frames), *size)
        return (channels, *size)

    def noise(self, seed: int, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Noise drawn on the CPU, so the same seed gives the same start on every device."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *shape), generator=generator)

    def image_tokens(self, config: Any, shape: tuple[int, ...]) -> int:
        """Tokens the transformer makes of one latent (for the flow schedulers' dynamic shift)."""
        patch = getattr(config, "patch_size", 1) or 1
        if isinstance(patch, (tuple, list)):  # Wan: (t, h, w)
            patches = tuple(patch)
        elif self.frames:
            patches = (getattr(config, "patch_size_t", 1) or 1, patch, patch)
        else:
            patches = (patch, patch)
        return math.prod(n // p for n, p in zip(shape[-len(patches):], patches))

    def extra(self, transformer: torch.nn.Module, shape: tuple[int, ...], condition_inputs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """Inputs besides latents, timestep and condition that stay the same over a sampling call."""
        return {}

    def to_model(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def timestep(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return t.expand(batch)

    def from_model(self, out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The prediction in the sampler's layout, latent channels only."""
        return out[:, : shape[0]]


class Video(Convention):
    frames = True


class FramesFirst(Video):
    """CogVideoX: `[batch, frames, channels, h, w]`; config sizes are in latent units."""

    def latent_shape(self, config: Any, family: Family) -> tuple[int, ...]:
        compression = int(getattr(config, "temporal_compression_ratio", 4))
        frames = (int(config.sample_frames) - 1) // compression + 1
        return (int(config.in_channels), frames, int(config.sample_height), int(config.sample_width))

    def noise(self, seed: int, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
        channels, frames, *size = shape
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((batch, frames, channels, *size), generator=generator).transpose(1, 2).contiguous()

    def image_tokens(self, config: Any, shape: tuple[int, ...]) -> int:
        patch, patch_t = int(config.patch_size), int(getattr(config, "patch_size_t", None) or 1)
        return (shape[1] // patch_t) * (shape[2] // patch) * (shape[3] // patch)

    def extra(self, transformer: torch.nn.Module, shape: tuple[int, ...], condition_inputs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        config = transformer.config
        if not getattr(config, "use_rotary_positional_embeddings", False):
            return {}
        return {"image_rotary_emb": _cogvideox_rope(_frozen(config), shape[1], shape[2], shape[3], str(device))}

    def to_model(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.transpose(1, 2)

    def from_model(self, out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return out.transpose(1, 2)[:, : shape[0]]


class Packed(Convention):
    """FLUX: 2x2 patches packed into tokens, position ids, timestep / 1000."""

    def latent_shape(self, config: Any, family: Family) -> tuple[int, ...]:
        size = _config_size(config) or tuple(family.latent_size)
        return (int(config.in_channels) // 4, *size)

    def image_tokens(self, config: Any, shape: tuple[int, ...]) -> int:
        return (shape[-2] // 2) * (shape[-1] // 2)

    def extra(self, transformer: torch.nn.Module, shape: tuple[int, ...], condition_inputs: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        height, width = shape[-2] // 2, shape[-1] // 2
        ids = torch.zeros(height, width, 3)
        ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
        ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
        text = condition_inputs.get("encoder_hidden_states")
        length = text.shape[1] if text is not None else 0
        return {"img_ids": ids.reshape(height * width, 3).to(device, dtype), "txt_ids": torch.zeros(length, 3, device=device, dtype=dtype)}

    def to_model(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    def timestep(self, t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return t.expand(batch).to(dtype) / 1000

    def from_model(self, out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        channels, h, w = shape
        b = out.shape[0]
        return out.view(b, h // 2, w // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, channels, h, w)


CONVENTIONS: dict[str, Convention] = {"image": Convention(), "video": Video(), "frames-first": FramesFirst(), "packed": Packed()}


def convention(family: Family) -> Convention:
    return CONVENTIONS[family.inputs]


def _config_size(config: Any) -> tuple[int, int] | None:
    size = getattr(config, "sample_size", None)
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _frozen(config: Any) -> tuple:
    keys = ("patch_size", "patch_size_t", "sample_width", "sample_height", "attention_head_dim")
    return tuple((k, getattr(config, k, None)) for k in keys)


@functools.lru_cache(maxsize=16)
def _cogvideox_rope(config: tuple, frames: int, height: int, width: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CogVideoXPipeline._prepare_rotary_positional_embeddings, in latent units.

    Cached, so every sampling call passes the same tensors (a CUDA graph keeps them as is).
    """
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    c = dict(config)
    p, p_t = int(c["patch_size"]), c["patch_size_t"]
    grid_h, grid_w = height // p, width // p
    base_w, base_h = int(c["sample_width"]) // p, int(c["sample_height"]) // p
    if p_t is None:  # CogVideoX 1.0
        crops = _resize_crop_region((grid_h, grid_w), base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=int(c["attention_head_dim"]), crops_coords=crops, grid_size=(grid_h, grid_w), temporal_size=frames, device=device
        )
    else:  # CogVideoX 1.5
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=int(c["attention_head_dim"]), crops_coords=None, grid_size=(grid_h, grid_w),
            temporal_size=(frames + p_t - 1) // p_t, grid_type="slice", max_size=(base_h, base_w), device=device,
        )
    return cos, sin


def _resize_crop_region(src: tuple[int, int], tgt_width: int, tgt_height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """CogVideoX's `get_resize_crop_region_for_grid`."""
    h, w = src
    if h / w > tgt_height / tgt_width:
        resize_height, resize_width = tgt_height, int(round(tgt_height / h * w))
    else:
        resize_width, resize_height = tgt_width, int(round(tgt_width / w * h))
    top, left = int(round((tgt_height - resize_height) / 2.0)), int(round((tgt_width - resize_width) / 2.0))
    return (top, left), (top + resize_height, left + resize_width)
