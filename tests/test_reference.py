"""The shipped reference model and classifier: loadable, as good as the model card says, and
failing with a one-line, actionable error when the files are missing or damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.model.reference import classifier as clf
from dqar_bench.model.reference import load
from dqar_bench.model.reference.data import load_digits_split


@pytest.fixture(scope="module")
def metrics() -> dict:
    return load.load_reference_metrics()


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.mark.slow
def test_shipped_dit_reaches_documented_class_accuracy(metrics: dict) -> None:
    from reference_training.train import eval_labels, sample_digits

    sample = metrics["test_sample"]
    dit = load.load_reference_dit()
    assert not dit.training
    assert dit.config.in_channels == 1 and dit.config.num_embeds_ada_norm == 10
    labels = eval_labels(sample["size"] // 10)

    def draw():
        return sample_digits(
            dit,
            load.load_reference_scheduler_config(),
            labels,
            seed=sample["seed"],
            num_inference_steps=sample["inference_steps"],
            guidance_scale=sample["guidance_scale"],
        )

    images = draw()
    assert images.shape == (sample["size"], 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    again = draw()
    assert torch.equal(images, again), "sampling must be deterministic on CPU"
    acc = clf.class_accuracy(images, labels)
    # Exact on the machine that trained it; one image of slack for another CPU's float rounding.
    assert acc >= sample["class_accuracy"] - 1.0 / sample["size"] - 1e-9
    assert acc >= 0.9


def test_scheduler_config_is_dits_schedule() -> None:
    from diffusers import DDIMScheduler

    config = load.load_reference_scheduler_config()
    assert config["num_train_timesteps"] == 1000
    assert config["beta_schedule"] == "linear"
    assert (config["beta_start"], config["beta_end"]) == (0.0001, 0.02)
    assert config["prediction_type"] == "epsilon"
    DDIMScheduler.from_config(config).set_timesteps(50)


def test_classifier_held_out_accuracy(split, metrics: dict) -> None:
    acc = clf.class_accuracy(split.test_images, split.test_labels)
    assert acc >= 0.97
    assert acc == pytest.approx(metrics["classifier_test_accuracy"], abs=1e-9)


def test_class_accuracy_accepts_uint8_rgb(split) -> None:
    rgb = ((split.test_images[:50] + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)
    assert clf.class_accuracy(rgb, split.test_labels[:50]) >= 0.94


def test_feature_extractor_is_registered_with_torch_fidelity() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert FEATURE_EXTRACTORS_REGISTRY[clf.FEATURE_EXTRACTOR_NAME] is clf.DigitFeatureExtractor


def test_frechet_distance_is_zero_on_itself_and_grows_with_noise(split) -> None:
    real = split.test_images
    assert abs(clf.frechet_distance(real, real)) < 1e-3
    gen = torch.Generator().manual_seed(0)
    distances = [
        clf.frechet_distance((real + sigma * torch.randn(real.shape, generator=gen)).clamp(-1, 1), real)
        for sigma in (0.1, 0.3, 0.6)
    ]
    assert 1e-3 < distances[0] < distances[1] < distances[2]


def _copy_weights(tmp_path: Path) -> Path:
    target = tmp_path / "weights"
    shutil.copytree(load.WEIGHTS_DIR, target)
    return target


def _assert_one_line_naming(err: DqarError, path: Path) -> None:
    message = str(err)
    assert "\n" not in message
    assert str(path) in message
    assert load.RETRAIN_COMMAND in message


@pytest.mark.parametrize(
    ("filename", "loader"),
    [
        (load.DIT_WEIGHTS_FILE, load.load_reference_dit),
        (load.DIT_CONFIG_FILE, load.load_reference_dit),
        (load.SCHEDULER_CONFIG_FILE, load.load_reference_scheduler_config),
        (load.CLASSIFIER_WEIGHTS_FILE, load.load_classifier),
    ],
)
def test_missing_file_raises_one_line_error(tmp_path: Path, filename: str, loader) -> None:
    weights = _copy_weights(tmp_path)
    (weights / filename).unlink()
    with pytest.raises(DqarError) as info:
        loader(weights)
    _assert_one_line_naming(info.value, weights / filename)
    assert "missing" in str(info.value)


@pytest.mark.parametrize(
    ("filename", "loader", "damage"),
    [
        (load.DIT_WEIGHTS_FILE, load.load_reference_dit, "truncate"),
        (load.DIT_WEIGHTS_FILE, load.load_reference_dit, "garbage"),
        (load.DIT_CONFIG_FILE, load.load_reference_dit, "garbage"),
        (load.SCHEDULER_CONFIG_FILE, load.load_reference_scheduler_config, "truncate"),
        (load.CLASSIFIER_WEIGHTS_FILE, load.load_classifier, "truncate"),
        (load.CLASSIFIER_WEIGHTS_FILE, load.load_classifier, "garbage"),
    ],
)
def test_corrupt_file_raises_one_line_error(tmp_path: Path, filename: str, loader, damage: str) -> None:
    weights = _copy_weights(tmp_path)
    path = weights / filename
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xffnot a weights file\n" * 7)
    with pytest.raises(DqarError) as info:
        loader(weights)
    _assert_one_line_naming(info.value, path)


def test_weights_from_another_architecture_raise_one_line_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = _copy_weights(tmp_path)
    path = weights / load.DIT_WEIGHTS_FILE
    save_file({"pos_embed.proj.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(DqarError) as info:
        load.load_reference_dit(weights)
    _assert_one_line_naming(info.value, path)


def test_shipped_weights_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in load.WEIGHTS_DIR.iterdir() if p.suffix == ".safetensors")
    assert total <= 20 * 1024 * 1024


def test_shipped_reference_set_is_a_fid_reference_by_name() -> None:
    from dqar_bench.measure.fidelity import Fidelity, reference_set
    from dqar_bench.model.reference.classifier import FEATURE_EXTRACTOR_NAME

    fidelity = Fidelity("digits-heldout", FEATURE_EXTRACTOR_NAME, metrics=("fid",))
    assert fidelity.reference_label == "digits-heldout (360 images)"
    real = reference_set("digits-heldout")
    assert fidelity.score(real)["fid"] < 1e-3
    noisy = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert fidelity.score(noisy)["fid"] > 1.0
