"""FID statistics of an image folder (`dqar-bench fid-stats`), made once and cached.

Apart from `fid_stats` (the statistics file: read, checked, written) because making them
takes `fidelity`'s feature extractor, and `fidelity` reads statistics files: each of the
two stays below this module instead of importing the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.measure.fid_stats import cached_path, check_statistics, read_statistics, write_statistics
from dqar_bench.measure.fidelity import Extractor, fid_statistics, image_dataset, image_files


def _cache_holds(target: Path, feature_extractor: str, count: int) -> bool:
    """Whether `target` holds sound statistics of `count` images by `feature_extractor`; a
    damaged or tampered cache does not, and is made again."""
    if not target.is_file():
        return False
    try:
        with np.load(target, allow_pickle=False) as old:
            if str(old["feature_extractor"]) != feature_extractor or int(old["num_images"]) != count:
                return False
        read_statistics(target, feature_extractor)
    except Exception:  # noqa: BLE001 - anything wrong with a cache means: make it again
        return False
    return True


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
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DqarError(f"fid-stats: {folder} is not a folder of images")
    files = image_files(folder, "fid-stats")
    target = Path(output).expanduser() if output is not None else cached_path(folder, feature_extractor)
    if target.is_dir():
        raise DqarError(f"fid-stats -o {target}: is a directory; give the path of a .npz file to write")
    if not target.parent.is_dir():
        raise DqarError(f"fid-stats -o {target}: the folder {target.parent} does not exist; create it or choose another path")
    if _cache_holds(target, feature_extractor, len(files)):
        return target
    if len(files) < 2:
        raise DqarError(f"fid-stats: {folder} holds {len(files)} image; a covariance needs at least 2 (FID-50K uses 50,000)")
    extractor = Extractor(feature_extractor, weights_path, ("fid",), device)
    stats = fid_statistics(extractor.features(image_dataset(files))[extractor.layers["fid"]])
    check_statistics(stats["mu"], stats["sigma"], f"made from {folder}")
    return write_statistics(target, stats, feature_extractor, len(files), str(folder.resolve()))
