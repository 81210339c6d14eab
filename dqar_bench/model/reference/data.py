"""The sklearn digits data set, split and scaled the one way every reference model sees it.

The DiT, the classifier and the Frechet reference set must agree on the split (so the
held-out digits are never trained on) and on the pixel scaling (so generated images and
real ones live in the same [-1, 1] space); keeping both here makes that agreement structural.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NATIVE_RESOLUTION = 8
"""sklearn's digits are 8x8 with integer intensities 0..16."""

MAX_INTENSITY = 16.0
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """Images are float32 (N, 1, S, S) in [-1, 1]; labels are int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def resolution(self) -> int:
        return int(self.train_images.shape[-1])


def scale_to_unit_range(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Maps sklearn intensities 0..16 to [-1, 1], the range the diffusion schedule assumes."""
    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    return x / MAX_INTENSITY * 2.0 - 1.0


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize, so an upsampled model still sees the same digits, only smoother."""
    if images.shape[-1] == resolution:
        return images
    out = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return out.clamp(-1.0, 1.0)


def held_out_images() -> torch.Tensor:
    """The held-out digits in [0, 1]: the real-data reference set for generated digits' FID."""
    return (load_digits_split().test_images + 1.0) / 2.0


def load_digits_split(
    resolution: int = NATIVE_RESOLUTION,
    held_out_fraction: float = HELD_OUT_FRACTION,
    seed: int = SPLIT_SEED,
) -> DigitsSplit:
    """The fixed, stratified train / held-out split of all 1797 digits.

    Stratified so every class is represented in the held-out set in its natural proportion,
    and seeded so the split never moves between training, tests and the benchmark harness.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    raw = digits.images.astype(np.float32)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=held_out_fraction, random_state=seed, stratify=labels
    )
    train_idx.sort()
    test_idx.sort()
    images = resize(scale_to_unit_range(raw).unsqueeze(1), resolution)
    lab = torch.from_numpy(labels)
    return DigitsSplit(
        train_images=images[train_idx].contiguous(),
        train_labels=lab[train_idx].contiguous(),
        test_images=images[test_idx].contiguous(),
        test_labels=lab[test_idx].contiguous(),
    )
