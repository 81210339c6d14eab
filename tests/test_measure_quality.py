"""Paired quality: SSIM and PSNR in the right space, LPIPS only where asked for, the CLIP score formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dqar_bench.measure.clip_score import clip_score
from dqar_bench.measure.quality import compare_outputs, paired, ssim


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


def _ssim_by_hand(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al. 2004 written out with loops: a 3x3 Gaussian window (sigma 1.5) slid over a
    single-channel image with no padding, the per-window SSIM averaged."""
    g = np.exp(-np.array([-1.0, 0.0, 1.0]) ** 2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 2):
        for j in range(x.shape[1] - 2):
            a, b = x[i:i + 3, j:j + 3], y[i:i + 3, j:j + 3]
            mx, my = (w * a).sum(), (w * b).sum()
            vx, vy = (w * a * a).sum() - mx**2, (w * b * b).sum() - my**2
            cov = (w * a * b).sum() - mx * my
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_reference_values():
    # constant images: no variance, so SSIM is the luminance term alone,
    # (2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4) = 0.2501 / 0.3126
    x, y = torch.full((1, 1, 3, 3), 0.5, dtype=torch.float64), torch.full((1, 1, 3, 3), 0.25, dtype=torch.float64)
    assert ssim(x, y, 1.0) == pytest.approx(0.2501 / 0.3126, rel=1e-12)
    # a 4x5 image against a distorted copy: the window shrinks to 3x3 (the image's short side, odd)
    a = np.array([[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.8, 0.4, 0.6, 0.0], [0.9, 0.1, 0.5, 0.5, 0.3], [0.4, 0.4, 0.2, 0.8, 1.0]])
    b = a * 0.8 + 0.1 * np.sin(np.arange(20).reshape(4, 5))
    ours = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None], 1.0)
    assert ours == pytest.approx(_ssim_by_hand(a, b, 1.0), rel=1e-12)
    assert ours < 1.0 and ssim(torch.tensor(a)[None, None], torch.tensor(a)[None, None], 1.0) == pytest.approx(1.0)


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

    class Fixed:  # a stand-in scorer: refuses nothing, always 0.25
        def refusal(self, images):
            return None

        def __call__(self, images, reference):
            return 0.25

    scored = compare_outputs(out_lat, ref_lat, decode, lpips=Fixed())
    assert scored["lpips"] == 0.25 and scored["lpips_note"] is None


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
