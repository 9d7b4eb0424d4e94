"""Per-image reconstruction metrics on [0, 1] images: MSE, PSNR and SSIM in two conventions.

`ssim` follows the paper's code: Gaussian window 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, data range
1, per channel, the image statistics filtered with a zero-padded ('same') convolution and the whole
map averaged (border included). `ssim_lib` is pytorch-msssim's value, which uses 'valid' filtering
(the 5-pixel border is cropped). The gap depends on the images: about 0.01 on lightly noised
originals, 0.1-0.2 on decoder reconstructions (docs/differences.md), so compare `ssim` with `ssim`
only; in the image interior the two maps are identical (tested).

PSNR = 10 log10(1 / MSE) per image; a perfect reconstruction has PSNR = +inf. `summarize` averages
PSNR over the finite values only and reports how many were infinite as `psnr_inf`. The published code
scores 10 log10(1 / MSE of a batch) and averages over batches (weighted by batch size): `summarize`
reports that too, as `psnr_batch_mean`, from the per-image MSEs in consecutive batches of the
attack's batch size (the MSE of a batch is the mean of its images' MSEs: all have the same size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _lib_ssim

WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w2d = torch.outer(g, g).to(device=device, dtype=dtype)
    return w2d.expand(channels, 1, size, size).contiguous()


def ssim_map_paper(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map (B, C, H, W) with zero-padded 'same' Gaussian filtering (the paper's convention)."""
    c = recon.shape[1]
    win = _gaussian_window(WIN_SIZE, WIN_SIGMA, c, recon.device, recon.dtype)
    pad = WIN_SIZE // 2

    def filt(t):
        return F.conv2d(t, win, padding=pad, groups=c)

    mu1, mu2 = filt(recon), filt(target)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(recon * recon) - mu1_sq
    s2 = filt(target * target) - mu2_sq
    s12 = filt(recon * target) - mu12
    c1, c2 = K1 ** 2, K2 ** 2
    return ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim_paper(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ssim_map_paper(recon, target).flatten(1).mean(1)


def ssim_lib(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _lib_ssim(recon, target, data_range=1.0, size_average=False, win_size=WIN_SIZE,
                     win_sigma=WIN_SIGMA, K=(K1, K2))


@torch.no_grad()
def per_image_metrics(recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics per image for [0,1] batches (B, C, H, W); float32 tensors (B,) on the input device."""
    if recon.shape != target.shape or recon.dim() != 4:
        raise ValueError(f"per_image_metrics needs two (B,C,H,W) batches of equal shape, "
                         f"got {tuple(recon.shape)} and {tuple(target.shape)}")
    recon = recon.detach().float()
    target = target.detach().float().to(recon.device)
    mse = (recon - target).pow(2).flatten(1).mean(1)
    psnr = 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> +inf, kept on purpose
    return {"mse": mse, "ssim": ssim_paper(recon, target), "ssim_lib": ssim_lib(recon, target), "psnr": psnr}


def metrics_in_batches(recon: torch.Tensor, target: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Same as per_image_metrics, in chunks to bound memory; results concatenated on the CPU."""
    parts: dict[str, list[torch.Tensor]] = {}
    for s in range(0, recon.shape[0], batch_size):
        for k, v in per_image_metrics(recon[s:s + batch_size], target[s:s + batch_size]).items():
            parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def concat_metrics(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join per-batch metric dicts into one (on the CPU)."""
    if not chunks:
        return {k: torch.empty(0) for k in ("mse", "ssim", "ssim_lib", "psnr")}
    return {k: torch.cat([c[k].detach().cpu() for c in chunks]) for k in chunks[0]}


def _mean_std(v: torch.Tensor) -> tuple[float, float]:
    if v.numel() == 0:
        return math.nan, math.nan
    v = v.double()
    return float(v.mean()), float(v.std(unbiased=False))


def psnr_batch(mse: torch.Tensor, batch_size: int) -> float:
    """The published PSNR: per batch of `batch_size` consecutive images, 10 log10(1 / batch MSE),
    averaged over the batches weighted by their sizes."""
    mse = torch.as_tensor(mse).flatten().double()
    if mse.numel() == 0:
        return math.nan
    chunks = mse.split(int(batch_size))
    sizes = torch.tensor([c.numel() for c in chunks], dtype=torch.float64)
    per_batch = torch.stack([10.0 * torch.log10(1.0 / c.mean()) for c in chunks])
    return float((per_batch * sizes).sum() / sizes.sum())


def summarize(per_image: dict[str, torch.Tensor], batch_size: int = 256) -> dict[str, float]:
    """Means and population stds (unbiased=False) as Python floats; `psnr_batch_mean` is the published
    batch-wise PSNR for scoring batches of `batch_size`.

    psnr_mean / psnr_std use only the finite PSNRs; `psnr_inf` counts perfect reconstructions.
    If every image is perfect, psnr_mean is +inf and psnr_std 0.
    """
    out: dict[str, float] = {}
    for k in ("mse", "ssim", "ssim_lib"):
        out[f"{k}_mean"], out[f"{k}_std"] = _mean_std(torch.as_tensor(per_image[k]).flatten())
    psnr = torch.as_tensor(per_image["psnr"]).flatten().double()
    finite = psnr[torch.isfinite(psnr)]
    n_inf = int((psnr == math.inf).sum())
    if finite.numel() == 0 and n_inf > 0:
        out["psnr_mean"], out["psnr_std"] = math.inf, 0.0
    else:
        out["psnr_mean"], out["psnr_std"] = _mean_std(finite)
    out["psnr_inf"] = n_inf
    out["psnr_batch_mean"] = psnr_batch(per_image["mse"], batch_size)
    out["n"] = int(torch.as_tensor(per_image["mse"]).numel())
    return out
