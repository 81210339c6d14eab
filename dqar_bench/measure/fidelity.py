"""Distributional quality: FID, IS and KID of generated images through torch-fidelity.

Features come from any feature extractor registered with torch-fidelity (Inception-v3 by
default; the reference model's digit classifier, or a test's tiny extractor, by name). The
reference is an image folder, a `.npz` of FID statistics (`mu`, `sigma`, as pytorch-fid
and ADM ship them; FID only), or a tensor of images (the baseline case's, for FID against
the baseline on the same seeds). Its features are computed once per run and reused for
every case. Nothing is downloaded: a feature extractor that would fetch weights is stopped
with a one-line error naming the option that points at a local file.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from dqar_bench.core.errors import DqarError
from dqar_bench.core.weights import check_weights_file, weights_only_loads
from dqar_bench.measure.fid_stats import read_statistics

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
METRICS = ("fid", "kid", "isc")
WEIGHTS_OPTION = "'quality.inception_weights' in the suite (or --inception-weights PATH)"
MAX_IMAGE_PIXELS = 8192 * 8192
"""Larger images are refused before they are decoded: a decompression bomb is a small file
that decodes to gigabytes, and FID images are a few hundred pixels a side."""

# Feature extractors that register themselves when their module is imported.
PROVIDERS = {"dqar-digits-classifier": "dqar_bench.model.reference.classifier"}

SHIPPED_WEIGHTS = {"dqar-digits-classifier": "dqar_bench.model.reference.load:classifier_weights_path"}
"""Feature extractors whose weights ship with the package (checked before a run when no path is given)."""

REFERENCE_SETS = {"digits-heldout": "dqar_bench.model.reference.data:held_out_images"}
"""Real image sets that ship with the project, by the name a suite gives as `quality.reference`."""


def reference_set(name: str) -> torch.Tensor:
    """A shipped reference set as images in [0, 1]."""
    module, function = REFERENCE_SETS[name].split(":")
    return getattr(importlib.import_module(module), function)()


class ImageSet(Dataset):
    """uint8 images (N, 3, H, W) as torch-fidelity reads them: one tensor per item."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (decoded) with 1 or 3 channels -> uint8 RGB, as feature extractors expect."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DqarError(
            f"FID / IS / KID need images of 1 or 3 channels, got outputs of shape {tuple(images.shape)}; "
            "a latent-space model needs a VAE to decode them (set 'quality.fid: 0' to turn these metrics off)"
        )
    return unit_to_uint8(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images)


def unit_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1], any shape, rounded to uint8 on the host: how every metric and preview
    here reads decoded images (as the reference implementations take them)."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


@contextlib.contextmanager
def no_downloads(option: str = WEIGHTS_OPTION) -> Iterator[None]:
    """Stop anything (torch-fidelity, torchvision) from fetching weights while inside."""

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        name = url.rsplit("/", 1)[-1]
        raise DqarError(f"the feature extractor wants to download {name} and dqar-bench downloads nothing; set {option} to a local copy of it ({url})")

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


def check_registered(name: str) -> None:
    """`ensure_registered` for validation: the extractors the project knows (torch-fidelity's
    Inception, the shipped providers) are taken as known without importing torch-fidelity,
    which brings torchvision: seconds of start-up time that `validate` does not need."""
    if name != INCEPTION and name not in PROVIDERS:
        ensure_registered(name)


def ensure_registered(name: str) -> type:
    """The feature extractor class registered as `name`, importing its provider if known."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name not in FEATURE_EXTRACTORS_REGISTRY and name in PROVIDERS:
        importlib.import_module(PROVIDERS[name])
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        known = ", ".join(sorted(FEATURE_EXTRACTORS_REGISTRY))
        raise DqarError(f"field 'quality.feature_extractor': '{name}' is not registered with torch-fidelity (registered: {known})")
    return FEATURE_EXTRACTORS_REGISTRY[name]


def check_weights(feature_extractor: str, weights_path: str | None) -> None:
    """Fail early, in one line, where the run would otherwise need a download, or where the
    weights file is missing or would run code when loaded (`dqar_bench.core.weights`)."""
    if weights_path is not None:
        check_weights_file(weights_path, WEIGHTS_OPTION)
        return
    if feature_extractor == INCEPTION:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not cached.is_file():
            raise DqarError(
                f"FID / IS / KID need the Inception weights and dqar-bench downloads nothing: set {WEIGHTS_OPTION} "
                f"to a local copy of {INCEPTION_FILE} ({INCEPTION_URL})"
            )
        check_weights_file(cached, "the Inception weights in the torch hub cache")
    shipped = SHIPPED_WEIGHTS.get(feature_extractor)
    if shipped is not None:
        module, function = shipped.split(":")
        path = getattr(importlib.import_module(module), function)()
        if not Path(path).is_file():
            raise DqarError(f"feature extractor '{feature_extractor}' needs its shipped weights file {path}, which is missing; reinstall dqar-bench")


class Extractor:
    """A torch-fidelity feature extractor, built once, with the layers the metrics read.

    Apart from `Fidelity` so that a rank of a distributed run can turn its share of the
    images into features without holding the reference: only features travel to rank 0.
    """

    def __init__(
        self,
        feature_extractor: str = INCEPTION,
        weights_path: str | None = None,
        metrics: tuple[str, ...] = METRICS,
        device: torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise DqarError(f"field 'quality.metrics': unknown metric(s) {sorted(unknown)} (metrics: {', '.join(METRICS)})")
        cls = ensure_registered(feature_extractor)
        check_weights(feature_extractor, weights_path)
        self.name = feature_extractor
        self.metrics = tuple(metrics)
        self.layers = {m: cls.get_default_feature_layer_for_metric(m) for m in self.metrics}
        self.cuda = device is not None and device.type == "cuda"
        self.batch_size = batch_size
        from torch_fidelity.utils import create_feature_extractor

        kwargs: dict[str, Any] = {"verbose": False}
        if weights_path is not None:
            kwargs["feature_extractor_weights_path"] = str(Path(weights_path).expanduser())
        with no_downloads(), weights_only_loads():
            self.model = create_feature_extractor(feature_extractor, sorted(set(self.layers.values())), cuda=self.cuda, **kwargs)

    def features(self, images: torch.Tensor | Dataset) -> dict[str, torch.Tensor]:
        """Features by layer (CPU tensors, one row per image, in order) of images or an image dataset."""
        from torch_fidelity.utils import get_featuresdict_from_dataset

        if isinstance(images, torch.Tensor):
            images = ImageSet(images if images.dtype == torch.uint8 else to_uint8(images))
        return get_featuresdict_from_dataset(images, self.model, self.batch_size, self.cuda, save_cpu_ram=True, verbose=False)


Features = Mapping[str, torch.Tensor]
"""Features by layer, as `Extractor.features` gives them."""


class Fidelity:
    """FID / IS / KID of image sets against one reference, with the extractor built once.

    Scoring is two steps, `features` then `score_features`, so that features made
    elsewhere (by other ranks) are scored exactly as the images of one process are.
    """

    def __init__(
        self,
        reference: str | Path | torch.Tensor | Features,
        feature_extractor: str | Extractor = INCEPTION,
        weights_path: str | None = None,
        metrics: tuple[str, ...] = METRICS,
        device: torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        """`reference`: a shipped set's name, an image folder, a .npz of FID statistics, images,
        or their features; `feature_extractor`: a registered name, or an `Extractor` to share."""
        if isinstance(feature_extractor, Extractor):
            self.extractor = feature_extractor
        else:
            self.extractor = Extractor(feature_extractor, weights_path, metrics, device, batch_size)
        self.name, self.metrics, self.layers = self.extractor.name, self.extractor.metrics, self.extractor.layers
        self.reference_label, self._ref_features, self._ref_stats = self._load_reference(reference)

    def features(self, images: torch.Tensor | Dataset) -> dict[str, torch.Tensor]:
        return self.extractor.features(images)

    def score(self, images: torch.Tensor) -> dict[str, Any]:
        """Metrics of `images` (uint8 RGB, or [0, 1] floats) against the reference."""
        return self.score_features(self.features(images))

    def score_features(self, feats: Features) -> dict[str, Any]:
        """Metrics of a set given by its features (one row per image) against the reference."""
        n = int(next(iter(feats.values())).shape[0])
        out: dict[str, Any] = {"n": n, "reference": self.reference_label, "feature_extractor": self.name}
        notes = []
        if "fid" in self.metrics:
            out["fid"] = self._fid(feats[self.layers["fid"]])
        if "isc" in self.metrics:
            from torch_fidelity.metric_isc import isc_features_to_metric

            isc = isc_features_to_metric(feats[self.layers["isc"]], splits=min(10, n))
            out["isc_mean"], out["isc_std"] = float(isc["inception_score_mean"]), float(isc["inception_score_std"])
        if "kid" in self.metrics:
            if self._ref_features is None:
                out["kid_mean"] = out["kid_std"] = None
                notes.append("KID needs reference images, not statistics")
            else:
                out["kid_mean"], out["kid_std"] = self._kid(feats[self.layers["kid"]], self._ref_features[self.layers["kid"]])
        out["note"] = "; ".join(notes) or None
        return out

    def _fid(self, features: torch.Tensor) -> float:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        stats = _float64(fid_features_to_statistics(features))
        if self._ref_stats is None:
            raise DqarError("FID needs a reference with images or statistics")
        if stats["mu"].shape != self._ref_stats["mu"].shape:
            raise DqarError(
                f"reference statistics have {self._ref_stats['mu'].shape[0]} features, feature extractor "
                f"'{self.name}' gives {stats['mu'].shape[0]}: the statistics were made with another extractor"
            )
        fid = float(fid_statistics_to_metric(stats, self._ref_stats, False)["frechet_inception_distance"])
        return checked_fid(fid, stats, self._ref_stats)

    def _kid(self, features: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
        from torch_fidelity.metric_kid import kid_features_to_metric

        size = min(1000, len(features), len(reference))
        kid = kid_features_to_metric(features, reference, kid_subset_size=size, kid_subsets=100, verbose=False)
        return float(kid["kernel_inception_distance_mean"]), float(kid["kernel_inception_distance_std"])

    def _load_reference(self, reference: str | Path | torch.Tensor | Features) -> tuple[str, Features | None, dict[str, np.ndarray] | None]:
        label = None
        if isinstance(reference, str) and reference in REFERENCE_SETS:
            label, reference = reference, reference_set(reference)
        if isinstance(reference, torch.Tensor):
            count = f"{len(reference)} images"
            return (f"{label} ({count})" if label else count), *self._with_stats(self.features(reference))
        if isinstance(reference, Mapping):
            missing = sorted(set(self.layers.values()) - set(reference))
            if missing:
                raise DqarError(f"reference features lack the layer(s) {missing} that feature extractor '{self.name}' gives for {', '.join(self.metrics)}")
            return f"{len(next(iter(reference.values())))} images", *self._with_stats(reference)
        path = Path(reference).expanduser()
        if path.is_file() and path.suffix == ".npz":
            layer = self.layers.get("fid", "")
            return str(path), None, read_statistics(path, self.name, int(layer) if layer.isdigit() else None)
        if path.is_dir():
            files = image_files(path)
            return f"{path} ({len(files)} images)", *self._with_stats(self.features(image_dataset(files)))
        raise DqarError(f"field 'quality.reference': {reference} is neither an image folder nor a .npz of FID statistics (or 'baseline')")

    def _with_stats(self, feats: Features) -> tuple[Features, dict[str, np.ndarray] | None]:
        return feats, (fid_statistics(feats[self.layers["fid"]]) if "fid" in self.metrics else None)


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """`mu` and `sigma` of FID features, in float64, as torch-fidelity computes them."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return _float64(fid_features_to_statistics(features))


def image_files(folder: Path, what: str = "field 'quality.reference'") -> list[str]:
    """The .png / .jpg images under `folder` (searched deep), in torch-fidelity's order."""
    from torch_fidelity.utils import glob_samples_paths

    files = glob_samples_paths(str(folder), samples_find_deep=True, samples_find_ext="png,jpg,jpeg", verbose=False)
    if not files:
        raise DqarError(f"{what}: no .png or .jpg images in {folder}")
    return files


def image_dataset(files: list[str]) -> Dataset:
    return ImageFiles(files)


class ImageFiles(Dataset):
    """Images of a folder as torch-fidelity reads them (RGB uint8, CHW), with every file that
    cannot be one named in one line: not an image, broken, of another size than the first,
    or over `MAX_IMAGE_PIXELS` (refused before decoding)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DqarError(f"{path}: {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS:,} (a decompression bomb?); resize or remove it")
                rgb = img.convert("RGB")
        except DqarError:
            raise
        except Image.DecompressionBombError:
            raise DqarError(f"{path}: over the limit of {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); resize or remove it") from None
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DqarError(f"{path}: not a readable image ({text}); remove or replace it") from None
        if self.size is None:
            self.size = rgb.size
        elif rgb.size != self.size:
            first = "x".join(map(str, self.size))
            raise DqarError(f"{path}: {width}x{height} pixels, the images before it are {first}; FID needs images of one size, resize them")
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


FID_ROUNDING = 1e-6
"""A distance may come out below zero by rounding alone (identical sets give a tiny negative
of the variances' scale); beyond this fraction of trace(sigma_1) + trace(sigma_2) it is not rounding."""


def checked_fid(fid: float, stats: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """The FID, or a one-line error: a NaN, infinite or negative distance is a failed measurement, never a value."""
    scale = float(np.trace(stats["sigma"]) + np.trace(reference["sigma"]))
    if not np.isfinite(fid):
        raise DqarError(f"FID is {fid}: a failed measurement (non-finite features or statistics), not recorded as a value")
    if fid < 0:
        if fid < -FID_ROUNDING * max(scale, 1.0):
            raise DqarError(f"FID is {fid:.6g}, below zero: a failed measurement (a covariance that is not positive semi-definite), not recorded as a value")
        return 0.0
    return fid


def _float64(stats: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}
