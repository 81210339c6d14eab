"""The measuring kit of one run, built once: decoder, LPIPS, CLIP, FID machinery, progress, environment.

The runner hands it to every case. Anything that cannot be had offline (Inception weights,
a reference folder) fails here, before the first case runs, with one line naming the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load, save

from dqar_bench.core.errors import DqarError
from dqar_bench.core.files import read_bytes, write_atomic
from dqar_bench.measure.clip_score import ClipScorer, load_clip
from dqar_bench.measure.fidelity import Extractor, Features, Fidelity, ensure_registered, to_uint8
from dqar_bench.measure.lpips import LpipsScorer, load_lpips
from dqar_bench.measure.progress import Progress
from dqar_bench.measure.quality import QualityConfig, decoder

FID_SEED_BASE = 1_000_000
"""Seeds of the images made for FID / IS / KID: apart from the timing seeds, the same for every case."""


@dataclass
class Instruments:
    """What every case of a run is measured with; one per run."""

    quality: QualityConfig = field(default_factory=QualityConfig)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    lpips: LpipsScorer | None = None
    lpips_note: str | None = None
    clip: ClipScorer | None = None
    fidelity: Fidelity | None = None
    """Ready to score; None while the reference is the baseline and the baseline has not run,
    and on the ranks of a distributed run that only make features (rank 0 scores)."""
    extractor: Extractor | None = None
    """Turns FID images into features, on every rank (built once; `fidelity` shares it)."""
    device: torch.device = torch.device("cpu")
    progress: Progress = field(default_factory=lambda: Progress(0, show=False))
    environment: dict[str, Any] = field(default_factory=dict)
    environment_file: str | None = None
    """The run directory's file that keeps `environment` (records name it)."""
    reference_file: Path | None = None
    """Where the baseline's FID features are kept when its images are the reference (for --resume)."""

    @property
    def fid_images(self) -> int:
        return self.quality.fid

    def calls_per_case(self, warmup: int, repeats: int, seeds: int, batch: int) -> int:
        return warmup + repeats * seeds + (math.ceil(self.fid_images / batch) if self.fid_images else 0)

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Outputs as images in [0, 1]: decoded by the VAE, or (pixel-space models) rescaled from [-1, 1]."""
        if self.decode is not None:
            return self.decode(latents)
        return ((latents.float() + 1) / 2).clamp(0, 1).cpu()

    def adopt_reference(self, features: Features) -> None:
        """The baseline's image features become the reference of every later case (and are kept on disk)."""
        if self.reference_file is not None:
            save_features(self.reference_file, features)
        self.fidelity = self.fidelity_against(features)

    def resume_reference(self) -> None:
        """On --resume, the baseline's saved features are the reference again."""
        if not self.fid_images or self.quality.reference != "baseline" or self.reference_file is None:
            return
        features = load_features(self.reference_file)
        if features is not None:
            self.fidelity = self.fidelity_against(features)

    def fidelity_against(self, reference: str | Features) -> Fidelity:
        assert self.extractor is not None
        return Fidelity(reference, self.extractor)


def build_instruments(
    quality: QualityConfig, vae: torch.nn.Module | None, latent_channels: int, device: torch.device,
    images: bool = False, scores: bool = True,
) -> Instruments:
    """`images`: the model's outputs are decoded images in [0, 1] already (a pipeline's), read as they are.
    `scores`: this process scores FID (a one-process run, or rank 0); the other ranks only make features."""
    kit = Instruments(quality=quality, device=device)
    if vae is not None or images:
        kit.decode = decoder(vae) if vae is not None else _as_decoded
        if quality.lpips is not None:
            kit.lpips = load_lpips(quality.lpips, device)
        else:
            kit.lpips_note = "not computed: the suite sets no 'quality.lpips' (local LPIPS weights)"
    if quality.clip is not None:
        _need_images(kit, latent_channels, "quality.clip", "CLIP score", "remove 'quality.clip'")
        kit.clip = load_clip(quality.clip, device)
    if quality.fid:
        _need_images(kit, latent_channels, "quality.fid", "FID / IS / KID", "set 'quality.fid: 0'")
        ensure_registered(quality.feature_extractor)  # the weights: checked by the suite and by the extractor
        kit.extractor = Extractor(quality.feature_extractor, quality.inception_weights, quality.metrics, device)
        if quality.reference != "baseline" and scores:
            kit.fidelity = kit.fidelity_against(quality.reference)
    return kit


def _need_images(kit: Instruments, latent_channels: int, field: str, metric: str, off: str) -> None:
    """A metric of images needs a decoder, or outputs that are images (1 or 3 channels) already."""
    if kit.decode is None and latent_channels not in (1, 3):
        raise DqarError(
            f"field '{field}': the model has no VAE and its outputs have {latent_channels} channels, so there are "
            f"no images for {metric}; {off} or use a model with a VAE"
        )


def _as_decoded(images: torch.Tensor) -> torch.Tensor:
    """Outputs that are decoded images already (a pipeline's): in [0, 1], float, on the CPU."""
    return images.float().clamp(0, 1).cpu()


def fid_batches(count: int, batch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The FID sampling calls a rank makes: call k (seed `FID_SEED_BASE + k`) goes to rank k % world_size.

    Seeds and labels belong to the call, not to the rank, so every image is the same
    whatever the number of ranks (for the same batch size).
    """
    return list(range(rank, math.ceil(count / batch), world_size))


def fid_image_indices(count: int, batch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Positions, in the one-process order, of the images `generate_images` makes on `rank`."""
    return [i for k in fid_batches(count, batch, rank, world_size) for i in range(k * batch, min((k + 1) * batch, count))]


def generate_images(
    call: Callable[[int, list[int]], torch.Tensor],
    count: int,
    batch: int,
    num_classes: int,
    kit: Instruments,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """uint8 images from seeded calls with uniformly drawn class labels (as FID-50k does).

    One process makes all `count` images; rank r of `world_size` makes only its calls
    (`fid_batches`), that is the images at `fid_image_indices` (an empty tensor if none).
    """
    images = []
    for k in fid_batches(count, batch, rank, world_size):
        seed = FID_SEED_BASE + k
        labels = torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(seed)).tolist()
        images.append(to_uint8(kit.to_images(call(seed, labels).detach().float().cpu()))[: count - k * batch])
        kit.progress.tick()
    return torch.cat(images) if images else torch.empty((0, 3, 0, 0), dtype=torch.uint8)


def save_features(path: Path, features: Features) -> None:
    write_atomic(path, save({k: v.contiguous() for k, v in features.items()}))


def load_features(path: Path) -> dict[str, torch.Tensor] | None:
    return load(read_bytes(path)) if path.exists() or path.is_symlink() else None
