import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as lib_ssim

from attacks.metrics import metrics_in_batches, per_image_metrics, ssim_map_paper, summarize

SUMMARY_KEYS = {"mse_mean", "mse_std", "ssim_mean", "ssim_std", "ssim_lib_mean", "ssim_lib_std",
                "psnr_mean", "psnr_std", "n"}


def smooth_images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def test_identical_images_are_perfect():
    x = smooth_images(4)
    m = per_image_metrics(x, x.clone())
    assert set(m) == {"mse", "ssim", "ssim_lib", "psnr"}
    assert all(v.shape == (4,) for v in m.values())
    assert torch.all(m["mse"] == 0)
    assert torch.allclose(m["ssim"], torch.ones(4), atol=1e-5)
    assert torch.allclose(m["ssim_lib"], torch.ones(4), atol=1e-5)
    assert torch.all(torch.isinf(m["psnr"])) and torch.all(m["psnr"] > 0)
    s = summarize(m)
    assert SUMMARY_KEYS <= set(s)
    assert s["n"] == 4 and s["psnr_inf"] == 4 and s["psnr_mean"] == math.inf and s["psnr_std"] == 0.0
    assert s["mse_mean"] == 0.0 and abs(s["ssim_mean"] - 1) < 1e-5


def test_psnr_of_known_gaussian_noise():
    g = torch.Generator().manual_seed(1)
    # 64x64x3 pixels: the per-image sample variance is within ~0.06 dB of s^2 (1 sigma).
    target = torch.full((8, 3, 64, 64), 0.5)
    for s in (0.01, 0.03, 0.1):
        recon = target + s * torch.randn(target.shape, generator=g)
        assert recon.min() >= 0 and recon.max() <= 1  # mid-grey + small noise never clips
        psnr = per_image_metrics(recon, target)["psnr"]
        expected = -10 * math.log10(s * s)
        assert torch.all((psnr - expected).abs() < 0.2), (s, psnr)
        assert abs(float(psnr.mean()) - expected) < 0.1


def test_paper_ssim_matches_library_in_the_interior():
    a = smooth_images(6, seed=2)
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    interior = ssim_map_paper(a, b)[..., 5:-5, 5:-5].flatten(1).mean(1)
    ref = lib_ssim(a, b, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5, K=(0.01, 0.03))
    assert torch.allclose(interior, ref, atol=1e-4)
    m = per_image_metrics(a, b)
    assert torch.allclose(m["ssim_lib"], ref, atol=1e-6)
    # Whole-map (border included) is a genuinely different number.
    assert not torch.allclose(m["ssim"], ref, atol=1e-4)


def test_summarize_mixes_finite_and_infinite_psnr():
    x = smooth_images(3, seed=4)
    y = x.clone()
    y[1:] = (y[1:] + 0.05).clamp(0, 1)
    m = per_image_metrics(y, x)
    s = summarize(m)
    assert s["psnr_inf"] == 1 and s["n"] == 3
    assert math.isfinite(s["psnr_mean"])
    assert abs(s["psnr_mean"] - float(m["psnr"][1:].mean())) < 1e-4
    assert abs(s["mse_std"] - float(m["mse"].std(unbiased=False))) < 1e-7
    assert all(isinstance(s[k], (int, float)) for k in SUMMARY_KEYS)


def test_metrics_in_batches_equals_one_batch():
    a, b = smooth_images(7, seed=5), smooth_images(7, seed=6)
    whole = per_image_metrics(a, b)
    parts = metrics_in_batches(a, b, batch_size=3)
    for k in whole:
        assert torch.allclose(whole[k], parts[k], atol=1e-6)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        per_image_metrics(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16))
