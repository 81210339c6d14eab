"""FID statistics are checked when read, a FID that cannot be is a failed measurement, and
`compare` calls an impossible quality value in either run a regression, naming its column."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dqar_bench.cli import main
from dqar_bench.core.errors import DqarError
from dqar_bench.measure.fid_stats import check_statistics, read_statistics, write_statistics
from dqar_bench.measure.fidelity import MAX_IMAGE_PIXELS, Fidelity, checked_fid, image_dataset
from dqar_bench.views.compare import compare_runs
from tests.test_fid_stats import write_folder
from tests.test_measure_compare import record, write_run
from tests.test_measure_fidelity import TINY


def covariance(images: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((images, features))
    return x.mean(0), np.cov(x, rowvar=False)


def save(tmp_path, mu, sigma, name="s.npz"):
    return write_statistics(tmp_path / name, {"mu": mu, "sigma": sigma}, TINY, 10, "test")


def test_sound_statistics_pass_even_singular_ones_after_a_float32_round_trip():
    mu, sigma = covariance(100, 256)  # fewer images than features: singular, eigenvalues at -1e-15 of the largest
    check_statistics(mu, sigma, "s.npz", 256)
    check_statistics(mu.astype(np.float32).astype(np.float64), sigma.astype(np.float32).astype(np.float64), "s.npz")


@pytest.mark.parametrize(("broken", "message"), [
    (lambda mu, s: (np.full_like(mu, np.nan), s), "'mu' holds 8 NaN or infinite value(s)"),
    (lambda mu, s: (mu, s + np.triu(np.ones_like(s), 1)), "'sigma' is not symmetric"),
    (lambda mu, s: (mu, s - 2 * np.eye(len(mu)) * np.diag(s).max()), "'sigma' is not positive semi-definite"),
    (lambda mu, s: (mu, s[:4, :4]), "'sigma' has shape (4, 4), not (8, 8)"),
    (lambda mu, s: (mu[None], s), "'mu' has shape (1, 8), not a vector"),
])
def test_broken_statistics_are_refused_in_one_line(tmp_path, broken, message):
    mu, sigma = broken(*covariance(50, 8))
    path = save(tmp_path, mu, sigma)
    with pytest.raises(DqarError) as info:
        read_statistics(path, TINY)
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DqarError, match="FID reference statistics"):
        Fidelity(str(path), TINY, metrics=("fid",))  # the run refuses them before anything is measured


def test_statistics_of_another_feature_count_are_refused():
    mu, sigma = covariance(50, 8)
    with pytest.raises(DqarError, match="8 features, the feature extractor gives 2048"):
        check_statistics(mu, sigma, "s.npz", 2048)


def test_pickled_statistics_are_refused_in_one_line_and_never_unpickled(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(DqarError, match="unreadable arrays .*allow_pickle=False"):
        read_statistics(path, TINY)


def test_a_nan_or_negative_fid_is_a_failed_measurement():
    stats = {"sigma": np.eye(4)}
    with pytest.raises(DqarError, match="FID is nan: a failed measurement"):
        checked_fid(float("nan"), stats, stats)
    with pytest.raises(DqarError, match="below zero: a failed measurement"):
        checked_fid(-6.4e7, stats, stats)
    assert checked_fid(-1e-12, stats, stats) == 0.0  # rounding of an identical set, not a distance below zero
    assert checked_fid(12.5, stats, stats) == 12.5


def test_compare_calls_an_impossible_or_non_finite_fid_in_either_run_a_regression(tmp_path, capsys):
    base = write_run(tmp_path / "a", [record("c", 1.5, fidelity={"fid": 4445.0}), record("d", 1.5, seed=1, fidelity={"fid": float("nan")})])
    new = write_run(tmp_path / "b", [record("c", 1.5, seed=2, fidelity={"fid": -6.4e7}), record("d", 1.5, seed=3, fidelity={"fid": 40.0})])
    by_case = {c.case: c for c in compare_runs(base, new).changes}
    assert by_case["c"].regressions == ["failed quality measurement: new fidelity.fid = -6.4e+07, impossible"]
    assert by_case["d"].regressions == ["failed quality measurement: base fidelity.fid non-finite"]
    assert main(["compare", str(base), str(new)]) == 1


def png_claiming(path, width, height):
    """A small PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_fid_stats_names_bad_images_and_paths_in_one_line(tmp_path, capsys):
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cases = {}
    cases["text"] = write_folder(tmp_path / "text", images)
    (cases["text"] / "zz.png").write_text("not an image")
    cases["sizes"] = write_folder(tmp_path / "sizes", images)
    Image.new("RGB", (8, 8)).save(cases["sizes"] / "zz.png")
    cases["bomb"] = write_folder(tmp_path / "bomb", images)
    png_claiming(cases["bomb"] / "zz.png", 20000, 20000)
    expected = {"text": "zz.png: not a readable image", "sizes": "zz.png: 8x8 pixels, the images before it are 16x16",
                "bomb": f"zz.png: over the limit of {MAX_IMAGE_PIXELS:,} pixels"}
    for name, folder in cases.items():
        assert main(["fid-stats", str(folder), "--feature-extractor", TINY, "--device", "cpu", "-o", str(tmp_path / f"{name}.npz")]) == 2
        err = capsys.readouterr().err
        assert expected[name] in err and err.count("\n") == 1, err
    good = write_folder(tmp_path / "good", images)
    for target, message in ((tmp_path / "missing" / "s.npz", "does not exist"), (tmp_path, "is a directory")):
        assert main(["fid-stats", str(good), "--feature-extractor", TINY, "--device", "cpu", "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_a_tampered_cache_is_made_again(tmp_path, capsys):
    good = write_folder(tmp_path / "good", torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    out = tmp_path / "s.npz"
    assert main(["fid-stats", str(good), "--feature-extractor", TINY, "--device", "cpu", "-o", str(out)]) == 0
    with np.load(out) as data:
        kept = {k: data[k] for k in data}
    np.savez(out, **{**kept, "sigma": -kept["sigma"]})  # tag intact, values broken
    assert main(["fid-stats", str(good), "--feature-extractor", TINY, "--device", "cpu", "-o", str(out)]) == 0
    read_statistics(out, TINY)  # sound again
    out.write_bytes(b"garbage")
    assert main(["fid-stats", str(good), "--feature-extractor", TINY, "--device", "cpu", "-o", str(out)]) == 0
    read_statistics(out, TINY)
    assert len(image_dataset([str(p) for p in sorted(good.iterdir())])) == 6
