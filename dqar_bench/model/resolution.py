"""The size a suite samples at: `resolution: {height: PX, width: PX, frames: N}`, in latent units.

Pipelines take sizes in pixels (and frames), so the suite does too; the latents are that
size divided by the VAE's compression, worked out as each family's diffusers pipeline works
it out (`vae_factors`): 2^(levels - 1) for an `AutoencoderKL` (8 for the real checkpoints,
2 for the tiny built-in VAEs), Wan's `scale_factor_spatial`/`scale_factor_temporal`,
HunyuanVideo's `spatial_compression_ratio`/`temporal_compression_ratio`, CogVideoX's
`temporal_compression_ratio`. A model without a VAE (PixArt-alpha's tiny one) is taken at
its family's published compression (8 in space, 4 in time for video; Sana's DC-AE 32), so
the pixels mean what they mean for the real checkpoint. Frames follow the video VAEs' causal
rule: N frames are (N - 1) / t + 1 latent frames, so N - 1 must divide by t.

The latent size is set once on the transformer (`transformer.dqar_latent_size`), which
`sampling.latents_shape` reads: the lean loop draws its noise at that size and the pipeline
path passes the pixels back from it, so both paths sample at one size through one seam.

Refused: DiT. `DiTPipeline` samples at the transformer's own `sample_size` (it takes no
height or width) and each DiT checkpoint is trained at one size (256 and 512 are separate
checkpoints), so another size would be an untrained embedding the pipeline path cannot run.
PixArt recomputes its sin-cos position embedding for any grid (scaled by `interpolation_scale`,
as it samples many aspect ratios) and SD3 crops its embedding up to `pos_embed_max_size`
patches: both run at other sizes, SD3 only up to that crop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dqar_bench.core.errors import ModelError
from dqar_bench.model.families import Family

KEYS = ("height", "width", "frames")
NO_VAE_SPATIAL = {"sana": 32}
"""A family's spatial compression where no VAE is loaded, when not 8."""


@dataclass(frozen=True)
class Resolution:
    """Pixels (and frames) a sampling call makes."""

    height: int
    width: int
    frames: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"height": self.height, "width": self.width}
        if self.frames is not None:
            out["frames"] = self.frames
        return out


def parse_resolution(raw: Any, family: Family | None) -> Resolution:
    """The suite's `resolution` mapping; raises `ModelError` with what to fix (the caller adds file and field)."""
    if not isinstance(raw, Mapping):
        raise ModelError(f"must be a mapping {{height: PX, width: PX}} (and frames: N for a video model), got {raw!r}")
    extra = [k for k in raw if k not in KEYS]
    if extra:
        raise ModelError(f"unknown key '{extra[0]}'; give height, width (pixels) and, for a video model, frames")
    for key in ("height", "width"):
        if key not in raw:
            raise ModelError(f"'{key}' is missing; give height and width in pixels")
    values = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"'{key}' must be a positive whole number, got {value!r}")
        values[key] = value
    if family is not None:
        if family.name == "dit":
            raise ModelError(
                "DiT samples only at its transformer's sample_size (DiTPipeline takes no height or width, and each DiT "
                "checkpoint is trained at one size); remove 'resolution' or use a checkpoint of the size you want"
            )
        if family.video and "frames" not in values:
            raise ModelError(f"family {family.name} makes videos: give 'frames' too (e.g. 33)")
        if not family.video and "frames" in values:
            raise ModelError(f"'frames' is for video models; family {family.name} makes images: remove it")
    return Resolution(values["height"], values["width"], values.get("frames"))


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def vae_factors(vae_config: Any, family: Family) -> tuple[int, int]:
    """(spatial, temporal) compression of the VAE, as the family's pipeline reads them from its config."""
    if vae_config is None:
        return NO_VAE_SPATIAL.get(family.name, 8), 4 if family.video else 1
    if _get(vae_config, "scale_factor_spatial") is not None:  # Wan
        spatial = int(_get(vae_config, "scale_factor_spatial"))
    elif _get(vae_config, "spatial_compression_ratio") is not None:  # HunyuanVideo
        spatial = int(_get(vae_config, "spatial_compression_ratio"))
    elif _get(vae_config, "encoder_block_out_channels") is not None:  # Sana's DC-AE
        spatial = 2 ** (len(_get(vae_config, "encoder_block_out_channels")) - 1)
    else:
        spatial = 2 ** (len(_get(vae_config, "block_out_channels")) - 1)
    temporal = 1
    if family.video:
        temporal = int(_get(vae_config, "scale_factor_temporal") or _get(vae_config, "temporal_compression_ratio") or 4)
    return spatial, temporal


def patch_sizes(config: Any, family: Family) -> tuple[int, int]:
    """(spatial, temporal) latent units one token covers; FLUX packs 2x2 latents into a token."""
    patch = _get(config, "patch_size") or 1
    if isinstance(patch, (tuple, list)):  # Wan: (t, h, w)
        return int(patch[1]), int(patch[0])
    spatial = int(patch) * (2 if family.inputs == "packed" else 1)
    return spatial, int(_get(config, "patch_size_t") or 1)


def latent_size(resolution: Resolution, config: Any, vae_config: Any, family: Family) -> tuple[int, ...]:
    """(h, w) or (frames, h, w) in latent units; raises `ModelError` where the model cannot sample at that size."""
    spatial, temporal = vae_factors(vae_config, family)
    patch, patch_t = patch_sizes(config, family)
    step = spatial * patch
    for key in ("height", "width"):
        value = getattr(resolution, key)
        if value % step:
            lower, upper = value // step * step, (value // step + 1) * step
            raise ModelError(
                f"'{key}' {value} is not a multiple of {step} (VAE compression {spatial} x patch {patch}); use "
                f"{upper}" + (f" or {lower}" if lower else "")
            )
    size = (resolution.height // spatial, resolution.width // spatial)
    crop = _get(config, "pos_embed_max_size")
    if crop is not None and max(size) // patch > int(crop):
        raise ModelError(
            f"{resolution.height}x{resolution.width} pixels is {size[0] // patch}x{size[1] // patch} patches, more than the "
            f"{crop}x{crop} position embedding this model crops from (pos_embed_max_size); use at most {int(crop) * step} pixels a side"
        )
    if not family.video:
        return size
    frames = resolution.frames or 1
    if (frames - 1) % temporal:
        lower = (frames - 1) // temporal * temporal + 1
        raise ModelError(
            f"'frames' {frames} is not 1 more than a multiple of {temporal} (the VAE's time compression: N frames are "
            f"(N - 1) / {temporal} + 1 latents); use {lower} or {lower + temporal}"
        )
    latent_frames = (frames - 1) // temporal + 1
    if latent_frames % patch_t:
        raise ModelError(f"'frames' {frames} is {latent_frames} latent frames, not a multiple of the time patch {patch_t}; use a multiple")
    return (latent_frames, *size)


def set_resolution(model: Any, resolution: Resolution) -> None:
    """Make `model` (a `loaded.LoadedModel`) sample at `resolution`: the one seam both paths read."""
    family = model.spec
    parse_resolution(resolution.as_dict(), family)  # the family rules, for a model whose family was unknown at validate
    vae = model.vae if model.vae is not None else getattr(model.pipeline, "vae", None)
    model.transformer.dqar_latent_size = latent_size(resolution, model.transformer.config, getattr(vae, "config", None), family)


def check_for_model(resolution: Resolution, name: str, family: Family) -> None:
    """`latent_size`'s checks at validate, where the model's configs can be read here: a tiny
    built-in model (built: it takes a moment) or a checkpoint on disk. Otherwise they run at load."""
    from dqar_bench.model.loaded import local_json
    from dqar_bench.model.models import BUILTIN_MODELS, TINY_MODELS, model_config

    if name in BUILTIN_MODELS:
        if name not in TINY_MODELS.values():
            return
        model = BUILTIN_MODELS[name]()
        config, vae = model.transformer.config, getattr(model.vae, "config", None)
    else:
        config = model_config(name)
        if config is None:
            return
        vae = local_json(name, "vae/config.json")
    latent_size(resolution, config, vae, family)
