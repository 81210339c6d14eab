"""A digit classifier that judges generated digits, and its features as a torch-fidelity extractor.

Inception features mean nothing on 8x8 grey digits, so the quality figures of the reference
model are measured with a classifier trained on the same data: its accuracy on generated
images says whether a sample is the digit it was asked for, and its penultimate layer is the
feature space for a Frechet distance. Registering the classifier with torch-fidelity lets the
harness reuse torch-fidelity's statistics code (and its KID / ISC, should it want them)
instead of carrying a second Frechet implementation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dqar_bench.model.reference.data import NATIVE_RESOLUTION
from dqar_bench.model.reference.load import load_classifier
from dqar_bench.model.reference.network import DigitClassifier

FEATURE_EXTRACTOR_NAME = "dqar-digits-classifier"
"""The name under which `DigitFeatureExtractor` is registered with torch-fidelity."""

FEATURE_PENULTIMATE = "penultimate"
FEATURE_LOGITS = "logits"


class DigitFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity's view of `DigitClassifier`.

    `feature_extractor_weights_path` (torch-fidelity's own keyword) points at another classifier
    `.safetensors` file; by default the shipped classifier is used.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str] | tuple[str, ...],
        feature_extractor_weights_path: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, features_list)
        path = Path(feature_extractor_weights_path) if feature_extractor_weights_path else None
        self.classifier = load_classifier(path=path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.classifier.features(images)
        out = {FEATURE_PENULTIMATE: feats, FEATURE_LOGITS: self.classifier.head(feats)}
        return tuple(out[name].to(torch.float32) for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE_PENULTIMATE, FEATURE_LOGITS)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        # ISC needs logits (torch-fidelity applies the softmax); the distances use features.
        return {
            "isc": FEATURE_LOGITS,
            "fid": FEATURE_PENULTIMATE,
            "kid": FEATURE_PENULTIMATE,
            "prc": FEATURE_PENULTIMATE,
        }[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, NATIVE_RESOLUTION, NATIVE_RESOLUTION, dtype=torch.uint8)


# Guarded: torch-fidelity refuses a second registration of the same name (module reloads).
if FEATURE_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(FEATURE_EXTRACTOR_NAME, DigitFeatureExtractor)


class _ImageTensorDataset(Dataset):
    """torch-fidelity reads inputs as Datasets of single images."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        self.images = images.detach().cpu()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@functools.lru_cache(maxsize=1)
def _shared_classifier() -> DigitClassifier:
    # Loaded once per process: class_accuracy is called for every benchmark cell.
    return load_classifier()


@torch.no_grad()
def predict(images: torch.Tensor) -> torch.Tensor:
    """Predicted digit per image, by the shipped classifier."""
    return _shared_classifier()(images.detach().cpu()).argmax(dim=1)


def class_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of generated images the classifier reads as the digit they were conditioned on:
    the reference model's stand-in for "the sample is still right" under acceleration."""
    labels = labels.detach().cpu().reshape(-1)
    if labels.numel() != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.numel()} labels")
    return float((predict(images) == labels).to(torch.float64).mean().item())


def frechet_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    weights_path: str | Path | None = None,
) -> float:
    """Frechet distance between two image sets in the classifier's feature space, computed by
    torch-fidelity's own FID machinery (on CPU, uncached: the sets are small and change per run).

    Images are float in [-1, 1] or uint8 0..255, shape (B, 1 or 3, H, W). With few samples
    (hundreds) the figure is biased upwards; compare values computed on equal-sized sets only.
    """
    metrics = torch_fidelity.calculate_metrics(
        input1=_ImageTensorDataset(images_a),
        input2=_ImageTensorDataset(images_b),
        fid=True,
        feature_extractor=FEATURE_EXTRACTOR_NAME,
        feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
        batch_size=512,
    )
    return float(metrics[torch_fidelity.KEY_METRIC_FID])
