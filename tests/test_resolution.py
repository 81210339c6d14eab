"""The suite's `resolution`: the size a model samples at, on the lean and the pipeline path.

flux-tiny (VAE 2x, packed 2x2 patches: pixels in steps of 4) samples 32x48 pixels as 16x24
latents instead of its 8x8; wan-tiny (VAE 2x in space, Wan's declared 4 in time) samples
5 frames of 32x48 as 2 latent frames of 16x24 instead of 3 of 8x8. The same suites run
through each family's own pipeline give the lean latents decoded (the pipeline tests'
tolerance), so both paths sample at the size through the one seam.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dqar_bench.config.identity import case_identity, case_key, measurement_settings
from dqar_bench.config.suite import load_suite
from dqar_bench.core.errors import ModelError, SuiteError
from dqar_bench.core.plugins import get_registry
from dqar_bench.measure.quality import decoder
from dqar_bench.model import families, models
from dqar_bench.model.resolution import Resolution, latent_size, vae_factors

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_builders import BUILDERS, save_pipeline  # noqa: E402
from pipeline_builders import run_records as _run
from pipeline_builders import saved_outputs as _outputs

SIZES = {"flux": ({"height": 32, "width": 48}, (4, 16, 24)), "wan": ({"height": 32, "width": 48, "frames": 5}, (4, 2, 16, 24))}
IMAGE_TOLERANCE = 32 * torch.finfo(torch.float32).eps  # as in test_pipelines: float32 rounding, not bit for bit
CASES = [{"name": "baseline"}, {"name": "interval", "gate": {"name": "interval", "every": 2}, "cache": "attention-output"}]


def _suite(path: Path, model: object, resolution: dict | None, **more: object) -> Path:
    data: dict = {
        "name": path.stem, "model": model, "sampler": {"steps": 3, "guidance_scale": 3.0}, "seeds": [0], "prompt_lengths": [8, 20],
        "device": "cpu", "dtype": "float32", "timing": {"warmup": 0, "repeats": 1}, "cases": CASES, **more,
    }
    if resolution is not None:
        data["resolution"] = resolution
    data = {k: v for k, v in data.items() if v is not None}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SIZES))
def test_lean_and_pipeline_paths_sample_at_the_suites_size(family: str, tmp_path: Path) -> None:
    resolution, shape = SIZES[family]
    name = models.TINY_MODELS[family]
    default = models.load_model(name, torch.device("cpu"), torch.float32).latent_shape
    assert default != shape
    lean, lean_dir = _run(_suite(tmp_path / "lean.yaml", name, resolution), tmp_path / "lean")
    folder = save_pipeline(family, tmp_path / "pipe")
    piped, piped_dir = _run(_suite(tmp_path / "piped.yaml", {"pipeline": str(folder)}, resolution), tmp_path / "piped")
    decode = decoder(models.load_model(name, torch.device("cpu"), torch.float32).vae)
    for case in ("baseline", "interval"):
        assert lean[case].status == piped[case].status == "ok", (lean[case].error, piped[case].error)
        latents = _outputs(lean_dir, lean[case])
        assert tuple(latents.shape) == (2, *shape)
        assert lean[case].latent_shape == piped[case].latent_shape == list(shape)
        assert lean[case].resolution == lean[case].identity["resolution"] == resolution
        images, expected = _outputs(piped_dir, piped[case]), decode(latents)
        assert images.shape == expected.shape
        assert float((images - expected).abs().max()) <= IMAGE_TOLERANCE
    assert piped["interval"].reused == lean["interval"].reused > 0


@pytest.mark.parametrize("family", ["flux", "wan", "sd3", "pixart-sigma"])
def test_the_factors_are_the_pipelines_own(family: str) -> None:
    pipe = BUILDERS[family]()
    spec = families.get(family)
    spatial, temporal = vae_factors(pipe.vae.config, spec)
    if spec.video:
        assert (spatial, temporal) == (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal)
    else:
        assert spatial == pipe.vae_scale_factor and temporal == 1


def test_a_model_without_a_vae_takes_its_familys_compression() -> None:
    """pixart-tiny has no VAE: pixels are PixArt's 8x latents, in steps of 8 x patch 2."""
    config = models.build_pixart_tiny().transformer.config
    assert latent_size(Resolution(128, 96), config, None, families.get("pixart")) == (16, 12)


def test_pixart_samples_at_another_size(tmp_path: Path) -> None:
    """Its sin-cos position embedding is recomputed for the larger grid (interpolation_scale)."""
    records, run = _run(_suite(tmp_path / "p.yaml", "pixart-tiny", {"height": 128, "width": 96}), tmp_path / "out")
    assert records["baseline"].status == "ok" and tuple(_outputs(run, records["baseline"]).shape) == (2, 4, 16, 12)


BAD = [
    ("flux-tiny", {"height": 30, "width": 48}, "'height' 30 is not a multiple of 4 (VAE compression 2 x patch 2); use 32 or 28"),
    ("flux-tiny", {"height": 32, "width": 48, "frames": 5}, "'frames' is for video models"),
    ("flux-tiny", {"height": 0, "width": 48}, "'height' must be a positive whole number, got 0"),
    ("flux-tiny", {"height": 32.0, "width": 48}, "'height' must be a positive whole number"),
    ("flux-tiny", {"height": 32}, "'width' is missing"),
    ("flux-tiny", {"height": 32, "width": 48, "depth": 1}, "unknown key 'depth'"),
    ("flux-tiny", [32, 48], "must be a mapping"),
    ("wan-tiny", {"height": 32, "width": 48}, "family wan makes videos: give 'frames'"),
    ("wan-tiny", {"height": 32, "width": 48, "frames": 4}, "'frames' 4 is not 1 more than a multiple of 4"),
    ("hunyuan-video-tiny", {"height": 32, "width": 32, "frames": 6}, "use 5 or 9"),
    ("hunyuan-video-tiny", {"height": 36, "width": 32, "frames": 5}, "not a multiple of 8 (VAE compression 4 x patch 2)"),
    ("sd3-tiny", {"height": 64, "width": 48}, "more than the 8x8 position embedding"),
    ("dit-tiny", {"height": 32, "width": 32}, "DiT samples only at its transformer's sample_size"),
]


@pytest.mark.parametrize("model,resolution,message", BAD, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD)])
def test_bad_resolutions_fail_validate_in_one_line(model: str, resolution: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dqar_bench.cli import main

    more = {"class_labels": [1], "prompt_lengths": None} if model == "dit-tiny" else {}
    suite = _suite(tmp_path / "bad.yaml", model, resolution, **more)
    assert main(["validate", str(suite)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: field 'resolution': " in lines[0] and message in lines[0], lines


def test_a_checkpoint_checked_at_load_fails_the_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Where validate cannot read the model's configs, the run checks at load, before any case runs."""
    from dqar_bench.runs.suite_model import apply_resolution

    suite = dataclasses.replace(load_suite(_suite(tmp_path / "s.yaml", "flux-tiny", None)), resolution=Resolution(30, 48))
    model = models.load_model("flux-tiny", torch.device("cpu"), torch.float32)
    with pytest.raises(SuiteError, match="s.yaml: field 'resolution': 'height' 30 is not a multiple of 4"):
        apply_resolution(suite, model)
    assert not hasattr(model.transformer, "dqar_latent_size")


def test_identity_has_the_resolution_only_when_set(tmp_path: Path) -> None:
    registry = get_registry()
    plain = load_suite(_suite(tmp_path / "a.yaml", "flux-tiny", None))
    sized = load_suite(_suite(tmp_path / "a.yaml", "flux-tiny", {"height": 32, "width": 48}))
    settings = measurement_settings(plain)
    for case in plain.cases:
        before = case_identity(plain, case, registry, "cpu")
        after = case_identity(sized, sized.case(case.name), registry, "cpu")
        assert "resolution" not in before and after.pop("resolution") == {"height": 32, "width": 48}
        assert after == before
        assert case_key(before, settings) != case_key(case_identity(sized, sized.case(case.name), registry, "cpu"), settings)


def test_the_real_checkpoints_sizes() -> None:
    """The GPU suites' sizes with the real VAEs' configs: peers-wan's 33 frames of 480x832, FLUX at 512 px."""
    suite = load_suite(Path(__file__).parent.parent / "suites" / "peers-wan.yaml")
    wan_vae = {"scale_factor_spatial": 8, "scale_factor_temporal": 4}  # AutoencoderKLWan's defaults, as Wan 2.1 ships them
    assert latent_size(suite.resolution, {"patch_size": [1, 2, 2]}, wan_vae, families.get("wan")) == (9, 60, 104)
    flux_vae = {"block_out_channels": [128, 256, 512, 512]}  # FLUX.1's VAE: 8x
    assert latent_size(Resolution(512, 512), {"patch_size": 1}, flux_vae, families.get("flux")) == (64, 64)
    with pytest.raises(ModelError, match="not a multiple of 16"):
        latent_size(Resolution(520, 512), {"patch_size": 1}, flux_vae, families.get("flux"))
