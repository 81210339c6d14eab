"""FID reference statistics (`quality.fid: {num_images, reference_stats}`) and the FID-50K suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dqar_bench.cli import main
from dqar_bench.config import suite as suite_module
from dqar_bench.core.errors import DqarError, SuiteError
from dqar_bench.measure import fid_stats
from dqar_bench.measure.fid_folder import folder_statistics
from dqar_bench.measure.fid_stats import FidConfig, cached_path, parse_fid_config, read_statistics
from dqar_bench.measure.fidelity import Extractor, Fidelity, to_uint8
from tests.test_measure_fidelity import TINY, noisy

FID50K = Path(__file__).resolve().parent.parent / "suites" / "fid50k-dit-xl-256.yaml"


@pytest.fixture(scope="module")
def images():
    return torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(4))


def write_folder(folder: Path, images: torch.Tensor) -> Path:
    from PIL import Image

    folder.mkdir()
    for i, img in enumerate(to_uint8(images)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


# --- the suite's quality.fid ------------------------------------------------------------


def test_fid_as_a_count_or_a_mapping():
    assert parse_fid_config(None, "s.yaml") == FidConfig(0, None)
    assert parse_fid_config(100, "s.yaml") == FidConfig(100, None)
    assert parse_fid_config({"num_images": 50000}, "s.yaml") == FidConfig(50000, None)
    parsed = parse_fid_config({"num_images": 8, "reference_stats": "~/ref.npz"}, "s.yaml")
    assert parsed == FidConfig(8, str(Path("~/ref.npz").expanduser()))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"num_image": 5}, "s.yaml: unknown field 'quality.fid.num_image' (did you mean 'num_images'?)"),
        ({"reference_stats": "r.npz"}, "s.yaml: field 'quality.fid.num_images' is missing"),
        ({"num_images": -1}, "s.yaml: field 'quality.fid.num_images' must be an integer >= 0"),
        ({"num_images": True}, "must be an integer >= 0"),
        ("many", "s.yaml: field 'quality.fid' must be an integer >= 0"),
        ({"num_images": 5, "reference_stats": "images/"}, "must be the path of a .npz of FID statistics (mu, sigma), got 'images/'; make one"),
    ],
)
def test_bad_fid_fields_are_one_line_errors(raw, message):
    with pytest.raises(SuiteError) as info:
        parse_fid_config(raw, "s.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_fid50k_suite_asks_for_50000_images_against_statistics():
    raw = yaml.safe_load(FID50K.read_text())
    assert parse_fid_config(raw["quality"]["fid"], FID50K) == FidConfig(50000, "data/VIRTUAL_imagenet256_labeled.npz")
    assert raw["quality"]["metrics"] == ["fid", "isc"]  # statistics hold no images: no KID
    assert raw["sampler"] == {"name": "ddim", "steps": 50, "guidance_scale": 1.5}


def test_the_fid50k_suite_validates_with_its_fid_mapping(capsys):
    assert main(["validate", str(FID50K)]) == 0, capsys.readouterr().err
    suite = suite_module.load_suite(FID50K)
    assert (suite.model, suite.steps, suite.guidance_scale, suite.batch) == ("facebook/DiT-XL-2-256", 50, 1.5, 64)
    assert (suite.quality.fid, suite.quality.reference, suite.quality.metrics) == (50000, "data/VIRTUAL_imagenet256_labeled.npz", ("fid", "isc"))
    assert [c.name for c in suite.cases] == ["baseline", "full_dqar"]
    dqar = suite.case("full_dqar").parts
    assert (dqar["gate"].name, dqar["quantizer"].params, dqar["scheduler"].params) == ("dqar", {"mode": "per_tensor"}, {"layer_fraction": 0.5})


# --- statistics files -------------------------------------------------------------------


def test_statistics_of_a_folder_are_cached_next_to_it_and_score_like_the_folder(images, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "real", images)
    path = folder_statistics(folder, TINY)
    assert path == cached_path(folder, TINY) == tmp_path / f"real.fid-{TINY}.npz"
    from_stats = Fidelity(str(path), TINY, metrics=("fid",))
    from_images = Fidelity(str(folder), TINY, metrics=("fid",))
    probe = noisy(images, 0.1)
    assert from_stats.score(probe)["fid"] == pytest.approx(from_images.score(probe)["fid"], rel=1e-9)
    assert abs(from_stats.score(images)["fid"]) < 1e-4

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("dqar_bench.measure.fidelity.Extractor", refuse)
    assert folder_statistics(folder, TINY) == path  # same images, same extractor: read from the cache
    monkeypatch.undo()
    write_folder(folder / "more", images[:3])
    folder_statistics(folder, TINY)
    with np.load(path) as data:
        assert int(data["num_images"]) == 43 and str(data["feature_extractor"]) == TINY  # made again


def test_statistics_of_another_extractor_are_refused(images, tmp_path):
    path = fid_stats.write_statistics(tmp_path / "s.npz", {"mu": np.zeros(8), "sigma": np.eye(8)}, "inception-v3-compat", 10, "x")
    with pytest.raises(DqarError, match=f"were made with feature extractor 'inception-v3-compat', the run uses '{TINY}'"):
        Fidelity(str(path), TINY)


def test_an_untagged_statistics_file_is_read_as_adm_ships_it(tmp_path):
    # ADM's reference batch: images, pool statistics and spatial statistics; only mu and sigma are read
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.ones(8), sigma=np.eye(8), mu_s=np.ones(3), sigma_s=np.eye(3))
    stats = read_statistics(tmp_path / "adm.npz", TINY)
    assert set(stats) == {"mu", "sigma"} and stats["mu"].dtype == np.float64


def test_missing_or_wrong_statistics_files_are_one_line_errors(tmp_path):
    with pytest.raises(DqarError, match="no file at .*fid-stats FOLDER"):
        read_statistics(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", arr_0=np.zeros(3))
    with pytest.raises(DqarError, match="has no 'mu' and 'sigma'"):
        read_statistics(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_text("not a zip")
    with pytest.raises(DqarError, match="not a readable .npz"):
        read_statistics(tmp_path / "broken.npz")


def test_fid_stats_command(images, tmp_path, capsys):
    folder = write_folder(tmp_path / "ref", images[:12])
    out = tmp_path / "stats.npz"
    assert main(["fid-stats", str(folder), "--feature-extractor", TINY, "--device", "cpu", "-o", str(out)]) == 0
    assert f"{out}: FID statistics (mu, sigma) of 12 images by '{TINY}'" in capsys.readouterr().out
    assert main(["fid-stats", str(tmp_path / "nothing"), "--feature-extractor", TINY]) == 2
    assert "is not a folder of images" in capsys.readouterr().err


# --- features scored apart from images ----------------------------------------------------


def test_scoring_features_is_scoring_their_images(images):
    fidelity = Fidelity(images[:20], TINY)
    probe = noisy(images, 0.2)
    assert fidelity.score_features(fidelity.features(probe)) == fidelity.score(probe)
    shared = Extractor(TINY)
    by_features = Fidelity(shared.features(images[:20]), shared)
    assert by_features.extractor is shared
    assert by_features.score(probe) == fidelity.score(probe)
    with pytest.raises(DqarError, match="lack the layer"):
        Fidelity({"feat": torch.zeros(3, 8)}, TINY)  # IS reads the logits, which are not there
