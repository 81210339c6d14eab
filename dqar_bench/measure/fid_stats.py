"""FID reference statistics: a `.npz` of `mu` and `sigma`, read, made from a folder, cached.

FID-50K compares 50,000 generated images with a reference distribution that only needs its
mean and covariance, so every node of a run reads one small file instead of the reference
images. ADM's reference batches (`VIRTUAL_imagenet256_labeled.npz`) carry `mu` and `sigma`
of Inception pool features and are read as they are (only those two arrays are loaded);
statistics of an image folder are made once with `dqar-bench fid-stats FOLDER` and cached
next to it, tagged with the feature extractor that made them, so statistics of another
extractor are refused in one line instead of giving a meaningless distance.

The suite names them as `quality.fid: {num_images: N, reference_stats: PATH}`
(`parse_fid_config`); a plain `quality.fid: N` keeps its meaning.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqar_bench.core.errors import DqarError, SuiteError

FID_KEYS = ("num_images", "reference_stats")


@dataclass(frozen=True)
class FidConfig:
    """The suite's `quality.fid`: how many images per case, and the statistics to score them against."""

    num_images: int = 0
    """Images generated per case for FID / IS / KID; 0 turns them off."""
    reference_stats: str | None = None
    """A `.npz` with `mu` and `sigma`; None: the reference is `quality.reference`."""


def parse_fid_config(raw: Any, source: str | Path) -> FidConfig:
    """`quality.fid` as an image count or `{num_images, reference_stats}`; one-line errors name `source`.

    Whether the statistics file exists is checked when a run starts (`read_statistics`),
    as for weights files, so a suite written for a cluster validates on a laptop.
    """

    def error(message: str) -> SuiteError:
        return SuiteError(f"{source}: {message}")

    if raw is None:
        return FidConfig()
    if isinstance(raw, dict):
        for key in raw:
            if key not in FID_KEYS:
                near = difflib.get_close_matches(str(key), FID_KEYS, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise error(f"unknown field 'quality.fid.{key}'{hint} (fields: {', '.join(FID_KEYS)})")
        if "num_images" not in raw:
            raise error("field 'quality.fid.num_images' is missing; add the number of images per case (e.g. 50000)")
        count = _count(raw["num_images"], "quality.fid.num_images", error)
        stats = raw.get("reference_stats")
        if stats is None:
            return FidConfig(count)
        if not isinstance(stats, str) or not stats.endswith(".npz"):
            raise error(
                f"field 'quality.fid.reference_stats' must be the path of a .npz of FID statistics (mu, sigma), got {stats!r}; "
                "make one from an image folder with `dqar-bench fid-stats FOLDER`"
            )
        return FidConfig(count, str(Path(stats).expanduser()))
    return FidConfig(_count(raw, "quality.fid", error))


def _count(value: Any, field: str, error: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise error(f"field '{field}' must be an integer >= 0 (images per case for FID / IS / KID; 0 turns them off), got {value!r}")
    return value


def read_statistics(path: str | Path, feature_extractor: str | None = None) -> dict[str, np.ndarray]:
    """`mu` and `sigma` (float64) of a statistics file, refused if another extractor made it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DqarError(f"FID reference statistics: no file at {path}; make it with `dqar-bench fid-stats FOLDER` or point the suite at an existing .npz")
    try:
        data = np.load(path)
    except Exception as exc:
        raise DqarError(f"FID reference statistics: {path} is not a readable .npz ({exc})") from None
    with data:
        if "mu" not in data or "sigma" not in data:
            raise DqarError(f"field 'quality.reference': {path} has no 'mu' and 'sigma' arrays (FID statistics)")
        made_by = str(data["feature_extractor"]) if "feature_extractor" in data else None
        if feature_extractor is not None and made_by is not None and made_by != feature_extractor:
            raise DqarError(
                f"FID reference statistics {path} were made with feature extractor '{made_by}', the run uses '{feature_extractor}'; "
                f"make them again with `dqar-bench fid-stats FOLDER --feature-extractor {feature_extractor}`"
            )
        return {"mu": np.asarray(data["mu"], dtype=np.float64), "sigma": np.asarray(data["sigma"], dtype=np.float64)}


def write_statistics(path: str | Path, stats: dict[str, np.ndarray], feature_extractor: str, num_images: int, source: str) -> Path:
    """Write statistics atomically, tagged with what made them."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], feature_extractor=feature_extractor, num_images=num_images, source=source)
    tmp.replace(path)
    return path


def cached_path(folder: str | Path, feature_extractor: str) -> Path:
    """Where the statistics of `folder` are cached: next to it, named for the extractor."""
    folder = Path(folder).expanduser().resolve()
    return folder.with_name(f"{folder.name}.fid-{feature_extractor}.npz")


def folder_statistics(
    folder: str | Path,
    feature_extractor: str = "inception-v3-compat",
    weights_path: str | None = None,
    device: torch.device | None = None,
    output: str | Path | None = None,
) -> Path:
    """Statistics of the images in `folder`, computed once and cached (default: `cached_path`).

    A cache made from as many images by the same extractor is reused; otherwise (images
    added or removed, another extractor) it is made again.
    """
    from dqar_bench.measure.fidelity import Extractor, fid_statistics, image_dataset, image_files

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DqarError(f"fid-stats: {folder} is not a folder of images")
    files = image_files(folder, "fid-stats")
    target = Path(output).expanduser() if output is not None else cached_path(folder, feature_extractor)
    if target.is_file():
        with np.load(target) as old:
            if str(old.get("feature_extractor", "")) == feature_extractor and int(old.get("num_images", -1)) == len(files):
                return target
    extractor = Extractor(feature_extractor, weights_path, ("fid",), device)
    stats = fid_statistics(extractor.features(image_dataset(files))[extractor.layers["fid"]])
    return write_statistics(target, stats, feature_extractor, len(files), str(folder.resolve()))
