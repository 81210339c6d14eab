"""FID / IS / KID machinery with a tiny feature extractor registered with torch-fidelity
(no Inception download): a set against itself is ~0, and the distance grows with noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dqar_bench.cli import main
from dqar_bench.core.errors import DqarError
from dqar_bench.measure.fidelity import Fidelity, check_weights, no_downloads, to_uint8
from dqar_bench.measure.records import RunDir
from dqar_bench.model import models
from dqar_bench.model.loaded import LoadedModel

TINY = "dqar-test-tiny"


class TinyExtractor(FeatureExtractorBase):
    """Pooled pixels through a fixed random projection: 8 features, 5 logits."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 4 * 4, 8, generator=g))
        self.register_buffer("head", torch.randn(8, 5, generator=g))

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        feats = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) @ self.proj
        out = {"feat": feats, "logits": feats @ self.head}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return ("feat", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "feat"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


if TINY not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(48, 3, 16, 16, generator=g)


def noisy(images, sigma, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(images):
    fidelity = Fidelity(images, TINY)
    same = fidelity.score(images)
    assert abs(same["fid"]) < 1e-6 and same["n"] == 48 and same["feature_extractor"] == TINY
    fids = [fidelity.score(noisy(images, s))["fid"] for s in (0.05, 0.15, 0.4)]
    assert 1e-6 < fids[0] < fids[1] < fids[2]
    assert same["isc_mean"] >= 1.0 and same["kid_mean"] is not None


def test_precomputed_statistics_reference(images, tmp_path):
    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = TinyExtractor(TINY, ["feat"])(to_uint8(images))[0]
    stats = fid_features_to_statistics(feats)
    np.savez(tmp_path / "ref.npz", mu=stats["mu"], sigma=stats["sigma"])
    fidelity = Fidelity(str(tmp_path / "ref.npz"), TINY)
    score = fidelity.score(images)
    assert abs(score["fid"]) < 1e-4
    assert score["kid_mean"] is None and "KID needs reference images" in score["note"]
    assert fidelity.score(noisy(images, 0.2))["fid"] > 1e-3


def test_image_folder_reference(images, tmp_path):
    from PIL import Image

    folder = tmp_path / "ref"
    folder.mkdir()
    for i, img in enumerate(to_uint8(images)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    fidelity = Fidelity(str(folder), TINY, metrics=("fid",))
    assert abs(fidelity.score(images)["fid"]) < 1e-6  # PNG is lossless: the same uint8 pixels
    assert "48 images" in fidelity.reference_label


def test_bad_reference_and_extractor_are_one_line_errors(tmp_path, images):
    with pytest.raises(DqarError, match="neither an image folder nor a .npz"):
        Fidelity(str(tmp_path / "nothing"), TINY)
    with pytest.raises(DqarError, match="not registered with torch-fidelity"):
        Fidelity(images, "no-such-extractor")
    with pytest.raises(DqarError, match="unknown metric"):
        Fidelity(images, TINY, metrics=("fid", "ppl"))


def test_missing_inception_weights_name_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DqarError) as info:
        check_weights("inception-v3-compat", None)
    message = str(info.value)
    assert "quality.inception_weights" in message and "--inception-weights" in message and "\n" not in message
    with pytest.raises(DqarError, match="no file at"):
        check_weights("inception-v3-compat", str(tmp_path / "missing.pth"))
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    check_weights("inception-v3-compat", str(weights))  # a local file of plain tensors is all it takes
    weights.write_bytes(b"")
    with pytest.raises(DqarError, match="cannot be read as weights"):
        check_weights("inception-v3-compat", str(weights))


def test_nothing_downloads_inside_the_guard():
    with no_downloads(), pytest.raises(DqarError, match="downloads nothing"):
        torch.hub.download_url_to_file("https://example.com/weights.pth", "/tmp/never")
    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"  # restored


def build_pixel_dit():
    """A 3-channel (pixel-space) tiny DiT: its outputs are images, so FID applies without a VAE."""
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=2,
            sample_size=8, patch_size=2, num_embeds_ada_norm=10,
        )
    return LoadedModel("pixel-tiny", model.eval())


SUITE = """\
name: fid
model: pixel-tiny
sampler: {{name: ddim, steps: 4, guidance_scale: 2.0}}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {{warmup: 0, repeats: 1}}
quality: {{fid: 6, reference: baseline, feature_extractor: {extractor}}}
cases:
  - name: baseline
  - name: overhead
    gate: never
  - name: every2
    gate: {{name: interval, every: 2}}
"""


@pytest.mark.slow
def test_runner_scores_each_case_against_the_baseline_images(write_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(models.BUILTIN_MODELS, "pixel-tiny", build_pixel_dit)
    path = write_suite(SUITE.format(extractor=TINY))
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    records = {r.case: r for r in RunDir(out).records()}
    assert records["baseline"].fidelity["reference"] == "this case (the baseline)"
    assert abs(records["overhead"].fidelity["fid"]) < 1e-6  # the same images as the baseline's
    assert records["every2"].fidelity["fid"] > 1e-6 and records["every2"].fidelity["n"] == 6
    assert records["every2"].evaluations == 4 * 2  # the timed call's steps x blocks: FID images are not counted
    assert (out / "fid-reference-features.safetensors").exists()  # apart from the case files in outputs/
    table = (out / "table.md").read_text()
    assert "| FID | IS | KID | images |" in table
    # a resumed run takes the saved baseline images as its reference
    with open(out / "records.jsonl") as fh:
        lines = fh.readlines()
    (out / "records.jsonl").write_text("".join(lines[:1]))
    assert main(["run", str(path), "--resume", str(out)]) == 0
    again = {r.case: r for r in RunDir(out).records()}
    assert again["every2"].fidelity["fid"] == pytest.approx(records["every2"].fidelity["fid"])


def test_run_without_inception_weights_stops_before_any_case(write_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(models.BUILTIN_MODELS, "pixel-tiny", build_pixel_dit)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = write_suite(SUITE.format(extractor="inception-v3-compat"))
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quality.inception_weights" in err
    assert not (tmp_path / "run").exists()  # checked before the run directory is made
    assert main(["run", str(path), "-o", str(tmp_path / "run2"), "--inception-weights", str(tmp_path / "nope.pth")]) == 2
    assert "no file at" in capsys.readouterr().err


def test_latent_model_without_vae_cannot_have_fid(write_suite, tmp_path, capsys):
    path = write_suite(SUITE.format(extractor=TINY).replace("pixel-tiny", "dit-tiny"))
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 2
    assert "no VAE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "quality, message",
    [
        ("{fid: 4, refrence: baseline}", "unknown field 'quality.refrence' (did you mean 'reference'?)"),
        ("{fid: -1}", "'quality.fid' must be >= 0"),
        ("{fid: 4, metrics: [fid, ppl]}", "'quality.metrics' must be a non-empty list of fid, kid, isc"),
        ("{fid: 4, reference: no/such/folder}", "'quality.reference': no/such/folder does not exist"),
    ],
)
def test_quality_keys_are_validated(write_suite, tmp_path, capsys, quality, message):
    body = SUITE.format(extractor=TINY).replace("quality: {fid: 6, reference: baseline, feature_extractor: dqar-test-tiny}", f"quality: {quality}")
    assert main(["validate", str(write_suite(body))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_timing_keys_are_validated(write_suite, capsys, monkeypatch):
    from dqar_bench.config.suite import load_suite

    monkeypatch.setitem(models.BUILTIN_MODELS, "pixel-tiny", build_pixel_dit)  # validate checks the model exists
    body = SUITE.format(extractor=TINY).replace("timing: {warmup: 0, repeats: 1}", "timing: {warmup: 0, repeats: 1, per_step: false, nvml_interval_ms: 50}")
    suite = load_suite(write_suite(body))
    assert suite.per_step is False and suite.nvml_interval_s == pytest.approx(0.05)
    assert suite.quality.fid == 6 and suite.quality.feature_extractor == TINY and suite.quality.metrics == ("fid", "kid", "isc")
    assert main(["validate", str(write_suite(body.replace("nvml_interval_ms: 50", "nvml_interval_ms: 0"), "b.yaml"))]) == 2
    assert "nvml_interval_ms" in capsys.readouterr().err
