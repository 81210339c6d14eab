"""FID reference statistics: a `.npz` of `mu` and `sigma`, read, made from a folder, cached.

FID-50K compares 50,000 generated images with a reference distribution that only needs its
mean and covariance, so every node of a run reads one small file instead of the reference
images. ADM's reference batches (`VIRTUAL_imagenet256_labeled.npz`) carry `mu` and `sigma`
of Inception pool features and are read as they are (only those two arrays are loaded);
statistics of an image folder are made once with `dqar-bench fid-stats FOLDER` and cached
next to it, tagged with the feature extractor that made them, so statistics of another
extractor are refused in one line instead of giving a meaningless distance.

Statistics are checked when read (`check_statistics`): `mu` a vector of the extractor's
features, `sigma` a square matrix of that size, every value finite, `sigma` symmetric and
positive semi-definite within a tolerance. A covariance that is not PSD gives a negative
"distance" (-6.4e7 was seen) and a NaN mean a NaN one; both would be recorded as figures.

The suite names them as `quality.fid: {num_images: N, reference_stats: PATH}`
(`parse_fid_config`); a plain `quality.fid: N` keeps its meaning.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqar_bench.core.errors import DqarError, SuiteError
from dqar_bench.core.files import write_atomic

FID_KEYS = ("num_images", "reference_stats")
SYMMETRY_TOL = 1e-6
"""Largest |sigma - sigma^T| allowed, relative to the largest |sigma|: `np.cov` is exactly
symmetric, and a float32 copy of it still is (rounding is per entry, alike on both sides)."""
PSD_TOL = 1e-6
"""How far below zero sigma's smallest eigenvalue may fall, relative to its largest variance.
A covariance of fewer images than features is singular: its zero eigenvalues come out at
about -1e-15 of the largest in float64 and -1e-8 after a float32 round trip (measured on
100 x 2048 Gaussian features); 1e-6 is above both and far below a broken matrix."""


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


def read_statistics(path: str | Path, feature_extractor: str | None = None, features: int | None = None) -> dict[str, np.ndarray]:
    """`mu` and `sigma` (float64) of a statistics file, checked (`check_statistics`; `features`:
    the extractor's feature count, where known), refused if another extractor made it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DqarError(f"FID reference statistics: no file at {path}; make it with `dqar-bench fid-stats FOLDER` or point the suite at an existing .npz")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DqarError(f"FID reference statistics: {path} is not a readable .npz ({_first_line(exc)})") from None
    with data:
        if "mu" not in data or "sigma" not in data:
            raise DqarError(f"field 'quality.reference': {path} has no 'mu' and 'sigma' arrays (FID statistics)")
        try:
            made_by = str(data["feature_extractor"]) if "feature_extractor" in data else None
            mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
        except Exception as exc:  # pickled objects (refused, never loaded), text, a damaged member
            raise DqarError(f"FID reference statistics {path}: unreadable arrays ({_first_line(exc)}); {REMAKE}") from None
        if feature_extractor is not None and made_by is not None and made_by != feature_extractor:
            raise DqarError(
                f"FID reference statistics {path} were made with feature extractor '{made_by}', the run uses '{feature_extractor}'; "
                f"make them again with `dqar-bench fid-stats FOLDER --feature-extractor {feature_extractor}`"
            )
    check_statistics(mu, sigma, path, features)
    return {"mu": mu, "sigma": sigma}


REMAKE = "make them again with `dqar-bench fid-stats FOLDER`"


def check_statistics(mu: np.ndarray, sigma: np.ndarray, path: str | Path, features: int | None = None) -> None:
    """Refuse (one line) statistics no Frechet distance can be computed from."""
    where = f"FID reference statistics {path}"
    if mu.ndim != 1 or mu.size == 0:
        raise DqarError(f"{where}: 'mu' has shape {mu.shape}, not a vector of features; {REMAKE}")
    if features is not None and mu.size != features:
        raise DqarError(f"{where}: {mu.size} features, the feature extractor gives {features}; {REMAKE} with the run's extractor")
    if sigma.shape != (mu.size, mu.size):
        raise DqarError(f"{where}: 'sigma' has shape {sigma.shape}, not ({mu.size}, {mu.size}) for {mu.size} features; {REMAKE}")
    for name, value in (("mu", mu), ("sigma", sigma)):
        bad = int(value.size - np.isfinite(value).sum())
        if bad:
            raise DqarError(f"{where}: '{name}' holds {bad} NaN or infinite value(s); {REMAKE}")
    scale = float(np.abs(sigma).max())
    skew = float(np.abs(sigma - sigma.T).max())
    if skew > SYMMETRY_TOL * scale:
        raise DqarError(f"{where}: 'sigma' is not symmetric (largest |sigma - sigma^T| = {skew:.3g}, largest |sigma| = {scale:.3g}); {REMAKE}")
    jitter = PSD_TOL * max(float(np.diag(sigma).max()), 0.0) + np.finfo(np.float64).tiny
    try:  # sigma + jitter*I has a Cholesky factor iff sigma's smallest eigenvalue is above -jitter (cheaper than eigenvalues)
        np.linalg.cholesky(sigma + jitter * np.eye(mu.size))
    except np.linalg.LinAlgError:
        raise DqarError(f"{where}: 'sigma' is not positive semi-definite (an eigenvalue below -{jitter:.3g}), so it is no covariance; {REMAKE}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def write_statistics(path: str | Path, stats: dict[str, np.ndarray], feature_extractor: str, num_images: int, source: str) -> Path:
    """Write statistics atomically, tagged with what made them."""
    data = io.BytesIO()
    np.savez(data, mu=stats["mu"], sigma=stats["sigma"], feature_extractor=feature_extractor, num_images=num_images, source=source)
    return write_atomic(Path(path), data.getvalue())


def cached_path(folder: str | Path, feature_extractor: str) -> Path:
    """Where the statistics of `folder` are cached: next to it, named for the extractor."""
    folder = Path(folder).expanduser().resolve()
    return folder.with_name(f"{folder.name}.fid-{feature_extractor}.npz")
