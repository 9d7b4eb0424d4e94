"""Attack-independent leakage figures of a noise defence (DESIGN.md §14; docs/leakage.md).

Pure tensor maths, no run folders: `lifecycle/leakage.py` feeds it a run's encoder and eval images.

- `noise_of(defenses)`: what the additive noise of a defence stack gives the two figures (Fisher
  information and entropy per sent value), or None when the stack adds no noise (then both are n/a).
- `dfil(fn, x)`: Hutchinson estimate of Tr(JᵀJ)/d per image with Rademacher probes through
  Jacobian-vector products (never the full Jacobian), adaptive in the number of probes.
- `mixture_bound(z, groups, noise)`: I(x; z) ≤ H(w) + Σ_j w_j·d_z·[½ log(2πe(v_j + s²)) − h(noise)],
  which for Gaussian noise of std σ is H(w) + (d_z/2)·Σ_j w_j·log(1 + v_j/σ²).
- `class_cluster_groups(z, y, ...)`: the grouping CEM uses, (class, k-means cluster) of ẑ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from defenses.cem_kmeans import fit_class_kmeans


@dataclass(frozen=True)
class Noise:
    """Additive, independent noise on every sent value, as the two bounds see it.

    fisher: location Fisher information per value (an upper bound when two kinds add up);
    variance: per value; entropy: differential entropy per value in nats (a lower bound when two
    kinds add up). An upper bound on the Fisher information and a lower bound on the noise entropy
    keep both figures bounds.
    """
    fisher: float
    variance: float
    entropy: float
    kind: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "fisher_per_value": self.fisher, "variance_per_value": self.variance,
                "entropy_per_value_nats": self.entropy}


def gaussian_noise(sigma: float) -> Noise:
    entropy = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    return Noise(1.0 / sigma**2, sigma**2, entropy, f"gaussian(sigma={sigma:g})")


def laplace_noise(b: float) -> Noise:
    """Laplace of scale b: location Fisher information 1/b², variance 2b², entropy 1 + log(2b)."""
    return Noise(1.0 / b**2, 2.0 * b**2, 1.0 + math.log(2.0 * b), f"laplace(b={b:g})")


def add_noises(a: Noise, b: Noise) -> Noise:
    """Two independent noises on the same value. Stam's inequality 1/J(A+B) ≥ 1/J(A) + 1/J(B) bounds
    the Fisher information from above, the entropy power inequality the entropy from below: both
    exact for two Gaussians."""
    entropy = 0.5 * math.log(math.exp(2 * a.entropy) + math.exp(2 * b.entropy))
    return Noise(1.0 / (1.0 / a.fisher + 1.0 / b.fisher), a.variance + b.variance, entropy, f"{a.kind}+{b.kind}")


def noise_of(defenses) -> Optional[Noise]:
    """The additive noise of a defence stack: Gaussian noise and local DP (Gaussian or Laplace).

    Every other obfuscation (dropout, top-k) runs after the noise (DESIGN.md §5), so it only
    post-processes z̃: neither Fisher information nor mutual information can grow by it, and the
    figures computed for the noise alone still bound what is sent. None: no additive noise.
    """
    noise = None
    for d in getattr(defenses, "defenses", [defenses]):
        part = None
        if d.name == "noise" and getattr(d, "sigma", 0.0) > 0:
            part = gaussian_noise(d.sigma)
        elif d.name == "local_dp":
            part = laplace_noise(d.scale) if d.mechanism == "laplace" else gaussian_noise(d.scale)
        if part is not None:
            noise = part if noise is None else add_noises(noise, part)
    return noise


# --------------------------------------------------------------------------------------------
# dFIL by Hutchinson's estimator
# --------------------------------------------------------------------------------------------
@dataclass
class TraceEstimate:
    """Tr(JᵀJ)/d averaged over the images, its standard error over probes, and the probes per image."""
    mean: float
    se: float
    probes: int
    per_image: torch.Tensor  # [N] per-image estimates of Tr(J_iᵀJ_i)/d (CPU, float64)


def _mean_se(per_image_sum: torch.Tensor, rounds: list) -> tuple:
    """Mean and standard error after len(rounds) probe rounds.

    Over N ≥ 2 images: the sd of the per-image means over √N. Each image's probe error is inside it,
    so it is never below the probes' own error for these images, and it also holds the sampling error
    of the images (the figure is meant for the image distribution, not these N). One image: the sd
    of the rounds over √rounds.
    """
    p = len(rounds)
    if per_image_sum.numel() >= 2:
        m = per_image_sum / p
        return float(m.mean()), float(m.std(unbiased=True)) / math.sqrt(m.numel())
    r = torch.tensor(rounds, dtype=torch.float64)
    return float(r.mean()), (float(r.std(unbiased=True)) / math.sqrt(p) if p > 1 else float("inf"))


def jtj_trace(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, batch_size: int = 256,
              rel_se: float = 0.05, min_probes: int = 2, max_probes: int = 64,
              generator: Optional[torch.Generator] = None, progress: bool = False, device=None) -> TraceEstimate:
    """Hutchinson: E_v ‖J v‖² = Tr(JᵀJ) for Rademacher v, J = ∂fn/∂x per image (fn acts per image).

    One probe round draws a fresh v for every image and runs one forward-mode pass (torch.func.jvp)
    over the images in batches (moved to `device` one at a time). Rounds continue until the standard
    error (`_mean_se`) relative to the mean is below `rel_se`, or `max_probes` rounds ran.
    """
    n = x.shape[0]
    d = x[0].numel()
    gen = generator or torch.Generator().manual_seed(0)
    rounds: list[float] = []
    per_image = torch.zeros(n, dtype=torch.float64)
    bar = tqdm(total=max_probes, desc="dFIL probes", disable=not progress, leave=False)
    try:
        while len(rounds) < max_probes:
            sq = torch.empty(n, dtype=torch.float64)
            for s in range(0, n, batch_size):
                xb = x[s:s + batch_size].to(device) if device is not None else x[s:s + batch_size]
                v = torch.randint(0, 2, xb.shape, generator=gen).to(device=xb.device, dtype=xb.dtype).mul_(2).sub_(1)
                _, jv = torch.func.jvp(fn, (xb,), (v,))
                sq[s:s + batch_size] = jv.detach().reshape(jv.shape[0], -1).double().pow(2).sum(1).cpu()
            per_image += sq
            rounds.append(float(sq.mean()))
            bar.update(1)
            if len(rounds) >= min_probes:
                mean, se = _mean_se(per_image, rounds)
                bar.set_postfix(rel_se=f"{se / mean:.3f}" if mean > 0 else "n/a")
                if mean == 0 or se / mean < rel_se:
                    break
    finally:
        bar.close()
    mean, se = _mean_se(per_image, rounds)
    p = len(rounds)
    return TraceEstimate(mean / d, se / d, p, per_image / (p * d))


def dfil(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, noise: Optional[Noise], **kw) -> dict:
    """dFIL = Tr(JᵀJ)·J_noise/d (J_noise = 1/σ² for Gaussian noise) with its standard error, and the
    Cramér–Rao bound 1/dFIL on an unbiased attacker's MSE per input value. No noise: n/a."""
    if noise is None:
        return {"dfil": None, "dfil_se": None, "probes": 0, "mse_bound_unbiased": None, "dfil_note": "n/a (no noise)"}
    t = jtj_trace(fn, x, **kw)
    value = t.mean * noise.fisher
    return {"dfil": value, "dfil_se": t.se * noise.fisher, "probes": t.probes,
            "dfil_rel_se": (t.se / t.mean) if t.mean > 0 else None,
            "mse_bound_unbiased": (1.0 / value) if value > 0 else float("inf"),
            "input_values": int(x[0].numel())}


# --------------------------------------------------------------------------------------------
# the mixture bound on I(x; z)
# --------------------------------------------------------------------------------------------
def group_stats(z: torch.Tensor, groups: torch.Tensor):
    """(weights [G], v [G], counts [G]) of the non-empty groups: v_j the mean over members and
    dimensions of the squared distance to the group's own mean."""
    z = z.reshape(z.shape[0], -1).double()
    _, gid, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    g = counts.numel()
    sums = torch.zeros(g, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, gid, z)
    means = sums / counts.unsqueeze(1).to(z)
    sq = (z - means[gid]).pow(2).sum(1)
    v = torch.zeros(g, dtype=z.dtype, device=z.device).index_add_(0, gid, sq) / (counts.to(z) * z.shape[1])
    return counts.to(z) / z.shape[0], v, counts


def mixture_bound(z: torch.Tensor, groups: torch.Tensor, noise: Optional[Noise], logdet: bool = True) -> dict:
    """I(x; z̃) ≤ H(w) + Σ_j w_j·d_z·[½ log(2πe(v_j + s²)) − h(noise)] nats per image, z̃ = z + noise,
    for x drawn from the images behind `z` (clean features, one row each) and any grouping.

    A Gaussian has the largest entropy for a covariance and log det ≤ d log(trace/d), whence the
    bound; for Gaussian noise it is H(w) + (d_z/2)·Σ_j w_j·log(1 + v_j/σ²). The log-det form
    (½ Σ_j w_j [log det(C_j + s²I) − d_z log s²], Gaussian noise only) is tighter, and is given only
    where every group has more images than d_z: with fewer its covariance estimate is singular and
    the figure is biased low. No noise: n/a.
    """
    n = z.shape[0]
    z = z.reshape(n, -1)
    d_z = z.shape[1]
    if noise is None:
        return {"mi_bound_nats": None, "mi_bound_bits_per_dim": None, "mi_note": "n/a (no noise)",
                "groups": None, "images": n}
    w, v, counts = group_stats(z, groups)
    h_w = float(-(w * w.log()).sum())
    per_group = d_z * (0.5 * torch.log(2 * math.pi * math.e * (v + noise.variance)) - noise.entropy)
    nats = h_w + float((w * per_group).sum())
    out = {"mi_bound_nats": nats, "mi_bound_bits_per_dim": nats / math.log(2) / d_z, "mi_group_entropy_nats": h_w,
           "groups": int(counts.numel()), "images": n, "feature_dims": d_z, "min_group_images": int(counts.min()),
           # I(x; z) of the empirical distribution is also at most H(x) = log n: above it the bound says
           # nothing about these images (it still estimates the figure of the distribution behind them)
           "log_images_nats": math.log(n)}
    if logdet:
        out["mi_logdet_nats"] = _logdet_form(z, groups, noise, h_w) if int(counts.min()) > d_z else None
    return out


def _logdet_form(z, groups, noise: Noise, h_w: float) -> Optional[float]:
    if not noise.kind.startswith("gaussian") or "+laplace" in noise.kind:
        return None
    s2 = noise.variance
    z = z.double()
    total = 0.0
    for g in torch.unique(groups):
        zs = z[groups == g]
        zs = zs - zs.mean(0)
        cov = zs.T @ zs / zs.shape[0] + s2 * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        total += zs.shape[0] / z.shape[0] * 0.5 * (float(torch.linalg.slogdet(cov)[1]) - z.shape[1] * math.log(s2))
    return h_w + total


@torch.no_grad()
def class_cluster_groups(z: torch.Tensor, y: torch.Tensor, num_classes: int, k: int, seed: int,
                         published: bool = False, iters: int = 50) -> torch.Tensor:
    """Group id class·K + cluster of every row: k-means per class fitted as CEM fits it (its seeding,
    `published` its --cem_kmeans published variant), then each row to its class's nearest centroid."""
    z = z.reshape(z.shape[0], -1).float()
    gen = torch.Generator().manual_seed(int(seed))
    mu, _, _, valid = fit_class_kmeans(z, y, num_classes, k, iters=iters, generator=gen, published=published)
    groups = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    y = y.long()
    for c in torch.unique(y).tolist():  # per class: an [N, K, D] difference tensor would not fit at 10k images
        rows = y == c
        d2 = torch.cdist(z[rows], mu[c]).masked_fill(~valid[c], float("inf"))
        groups[rows] = c * k + d2.argmin(1)
    return groups
