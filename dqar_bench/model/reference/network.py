"""The digit classifier's network: what the shipped weights hold, and nothing that loads them.

Apart from `classifier` (the metrics that use it) so that `load` can rebuild the network
and `classifier` can load it, without the two importing each other.
"""

from __future__ import annotations

import torch
from torch import nn

from dqar_bench.model.reference.data import NATIVE_RESOLUTION, NUM_CLASSES, resize


class DigitClassifier(nn.Module):
    """A small CNN; its size is stored with the weights so loading can rebuild it exactly."""

    def __init__(
        self,
        resolution: int = NATIVE_RESOLUTION,
        width: int = 32,
        feature_dim: int = 64,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if resolution % 4:
            raise ValueError(f"classifier resolution must be a multiple of 4, got {resolution}")
        self.resolution = resolution
        self.width = width
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (resolution // 4) ** 2, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(feature_dim, num_classes))

    def architecture(self) -> dict[str, int]:
        return {
            "resolution": self.resolution,
            "width": self.width,
            "feature_dim": self.feature_dim,
            "num_classes": self.num_classes,
        }

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Accepts what torch-fidelity and the sampler hand over: uint8 0..255 or float in [-1, 1],
        one or three channels, any square size; the classifier only knows its own resolution."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.to(torch.float32) / 127.5 - 1.0
        else:
            x = images.to(torch.float32)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        return resize(x.clamp(-1.0, 1.0), self.resolution)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-activation penultimate layer: unlike post-ReLU features it has no dead,
        constant dimensions, so its covariance stays well conditioned for the Frechet distance."""
        return self.body(self.prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
