"""Paired quality: SSIM and PSNR in the right space, LPIPS only with local weights, CLIP hook."""

from __future__ import annotations

import pytest
import torch

from dqar_bench.errors import DqarError
from dqar_bench.measure.clip_score import clip_score, load_open_clip
from dqar_bench.quality import compare_outputs, lpips_scorer, paired, ssim


def images(seed=0, shape=(4, 3, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    # smooth images: SSIM is about structure, noise has none
    base = torch.nn.functional.interpolate(torch.rand(shape[0], shape[1], 8, 8, generator=g), size=shape[2:], mode="bilinear")
    return base.double()


def test_ssim_is_one_for_identical_and_falls_with_noise():
    x = images()
    assert ssim(x, x, 1.0) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    values = [ssim((x + s * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1), x, 1.0) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)
    assert ssim(x, y, 1.0) == pytest.approx(ssim(y, x, 1.0))  # symmetric


def test_ssim_handles_tiny_latents():
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x, float(x.max() - x.min())) == pytest.approx(1.0)
    assert ssim(x * 0.9, x, float(x.max() - x.min())) < 1.0


def test_latent_space_without_vae_and_lpips_explained():
    ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ref + 0.01
    q = compare_outputs(out, ref)
    assert q["space"] == "latent" and q["mse"] == pytest.approx(1e-4, rel=1e-3) and q["ssim"] < 1.0
    assert q["psnr_db"] == pytest.approx(paired(out, ref)["psnr_db"])
    assert q["lpips"] is None and "no VAE" in q["lpips_note"]


def test_decoded_images_take_psnr_and_ssim_latents_keep_mse():
    ref_lat = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out_lat = ref_lat + 0.1

    def decode(latents):  # a stand-in VAE: latents -> images in [0, 1]
        return torch.sigmoid(torch.nn.functional.interpolate(latents[:, :3], scale_factor=4))

    q = compare_outputs(out_lat, ref_lat, decode, lpips=None, lpips_note="not computed: weights not found")
    img, ref_img = decode(out_lat).double(), decode(ref_lat).double()
    mse = float((img - ref_img).pow(2).mean())
    assert q["space"] == "image"
    assert q["psnr_db"] == pytest.approx(10 * torch.log10(torch.tensor(1.0 / mse)).item())
    assert q["mse"] == pytest.approx(0.01, rel=1e-3)  # on the latents
    assert q["latent_psnr_db"] == pytest.approx(paired(out_lat, ref_lat)["psnr_db"])
    assert q["lpips"] is None and q["lpips_note"] == "not computed: weights not found"
    scored = compare_outputs(out_lat, ref_lat, decode, lpips=lambda a, b: 0.25)
    assert scored["lpips"] == 0.25 and scored["lpips_note"] is None


def test_lpips_needs_its_weights_on_disk(tmp_path):
    scorer, note = lpips_scorer(str(tmp_path), torch.device("cpu"))
    assert scorer is None
    assert "weights-vgg16-lpips.pth" in note and "quality.lpips_weights" in note


class FakeClip:
    """Embeddings chosen so the cosines are known: image i matches prompt i only."""

    def image_features(self, imgs):
        return torch.eye(imgs.shape[0], 4)

    def text_features(self, prompts):
        return torch.stack([torch.eye(4)[int(p.split()[-1])] for p in prompts])


def test_clip_score_hook():
    imgs = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    matched = clip_score(imgs, ["digit 0", "digit 1", "digit 2"], FakeClip())
    assert matched["clip_score"] == pytest.approx(100.0) and matched["n"] == 3
    crossed = clip_score(imgs, ["digit 1", "digit 2", "digit 0"], FakeClip())
    assert crossed["clip_score"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        clip_score(imgs, ["one"], FakeClip())


def test_clip_weights_must_be_local(tmp_path):
    with pytest.raises(DqarError, match="weights_path"):
        load_open_clip(None)
    with pytest.raises(DqarError, match="missing.pt"):
        load_open_clip(str(tmp_path / "missing.pt"))
