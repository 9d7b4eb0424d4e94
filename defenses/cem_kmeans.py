"""CEM's per-class mixture state: batched k-means for all classes at once, and a diagnostic."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# k-means per class, all classes in one batched problem
# --------------------------------------------------------------------------------------------
def _pad_by_class(z: torch.Tensor, y: torch.Tensor, num_classes: int):
    """Pack z into [C, Nmax, D] (class-major, zero padded) so every class is one batch row.

    Padding costs ~nothing for balanced data and lets every k-means step be a bmm.
    Returns (zp, mask[C,Nmax], counts[C], order, pos) where zp[y[order], pos] = z[order].
    """
    n, d = z.shape
    counts = torch.bincount(y, minlength=num_classes)
    order = torch.argsort(y, stable=True)
    ys = y[order]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n, device=z.device) - starts[ys]
    nmax = int(counts.max().item()) if n else 0
    zp = z.new_zeros(num_classes, max(nmax, 1), d)
    zp[ys, pos] = z[order]
    mask = torch.zeros(num_classes, max(nmax, 1), dtype=torch.bool, device=z.device)
    mask[ys, pos] = True
    return zp, mask, counts, order, pos


def _sq_dists(zp: torch.Tensor, mu: torch.Tensor, zz: torch.Tensor) -> torch.Tensor:
    """||z - mu||^2 for every (class, member, cluster): [C, Nmax, K]; zz = ||z||^2 [C, Nmax, 1] is
    passed in because it does not change across iterations and costs a full pass over zp."""
    mm = (mu * mu).sum(-1).unsqueeze(1)
    return (zz - 2.0 * torch.bmm(zp, mu.transpose(1, 2)) + mm).clamp_min_(0.0)


def _kmeanspp_init(zp, mask, counts, k, generator, power: float = 1.0):
    """k-means++ seeding for every class at once; clusters a class cannot fill are invalid. Each
    seed is drawn with probability proportional to (squared distance)^power: 1 is k-means++, 0.5 the
    published code's (distance itself)."""
    c, nmax, d = zp.shape
    rows = torch.arange(c, device=zp.device)
    mu = zp.new_zeros(c, k, d)
    valid = torch.zeros(c, k, dtype=torch.bool, device=zp.device)
    best = torch.full((c, nmax), float("inf"), device=zp.device, dtype=zp.dtype)
    for j in range(k):  # K is 5 or 15: a short loop over seeds, not over classes
        if j == 0:
            w = mask.to(zp.dtype)
        else:
            w = best.clamp_min(0.0).pow(power) * mask
        ok = w.sum(1) > 0
        # Rows with nothing left to pick (empty class, or all members duplicated) draw a dummy index.
        w = torch.where(ok.unsqueeze(1), w, torch.ones_like(w))
        pick = torch.multinomial(w.cpu(), 1, generator=generator).squeeze(1).to(zp.device)
        mu[:, j] = zp[rows, pick]
        valid[:, j] = ok & (counts > j)
        d2 = ((zp - mu[:, j : j + 1]) ** 2).sum(-1)
        best = torch.minimum(best, d2)
    return mu, valid


def _assign(zp, mu, valid, zz):
    dist = _sq_dists(zp, mu, zz).masked_fill_(~valid.unsqueeze(1), float("inf"))
    return dist.argmin(-1)


def _cluster_sums(zp, mask, assign, k):
    onehot = F.one_hot(assign, k).to(zp.dtype) * mask.unsqueeze(-1).to(zp.dtype)  # [C,Nmax,K]
    n_ck = onehot.sum(1)  # [C,K]
    sums = torch.bmm(onehot.transpose(1, 2), zp)  # [C,K,D]
    return onehot, n_ck, sums


@torch.no_grad()
def fit_class_kmeans(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    k: int,
    init: Optional[torch.Tensor] = None,
    iters: int = 50,
    generator: Optional[torch.Generator] = None,
    info: Optional[dict] = None,
    published: bool = False,
):
    """K clusters per class, all classes at once in batched tensor ops on `z.device`.

    Args:
        z: [N, D] features (flattened), y: [N] labels in [0, num_classes).
        init: optional [C, K, D] centroids to warm start from; k-means++ seeding otherwise.
        info: optional dict that receives "iters", the Lloyd updates run (== `iters` when the
            assignments never settled: a sign the cap, not convergence, ended the fit).
    Returns:
        centroids [C,K,D], variances [C,K] (mean over members and dims of (z - mu)^2),
        weights [C,K] (n_ck / n_c), valid [C,K] (cluster has members). Arrays stay aligned with
        cluster indices: empty clusters are marked invalid, never compacted.
    published (`--cem_kmeans published`): the published kmeans_cuda instead: seeds drawn with
        probability proportional to the distance, empty clusters keep their centroid and stay
        candidates (every cluster of a class with members is valid), and the variances and weights
        are compacted as published (see _compact_published).
    """
    z = z.reshape(z.shape[0], -1).float()
    y = y.long()
    zp, mask, counts, _, _ = _pad_by_class(z, y, num_classes)
    d = zp.shape[-1]
    zz = (zp * zp).sum(-1, keepdim=True)
    if init is None:
        mu, valid = _kmeanspp_init(zp, mask, counts, k, generator, power=0.5 if published else 1.0)
        if published:  # its seeds may repeat a point; every one is a candidate all the same
            valid = (counts > 0).unsqueeze(1).expand(-1, k).clone()
    else:
        mu = init.to(zp).clone()
        valid = (counts > 0).unsqueeze(1).expand(-1, k).clone()

    assign = _assign(zp, mu, valid, zz)
    if published:
        mu, assign, done = _published_lloyd(zp, mask, counts, mu, assign, zz, iters)
    else:
        prev = None
        done = 0
        for _ in range(iters):
            if prev is not None and bool(((assign == prev) | ~mask).all()):
                break  # stable: mu are the means of `assign` and `assign` is nearest to mu
            done += 1
            _, n_ck, sums = _cluster_sums(zp, mask, assign, k)
            filled = n_ck > 0
            mu = torch.where(filled.unsqueeze(-1), sums / n_ck.clamp_min(1).unsqueeze(-1), mu)
            valid = filled
            prev = assign
            assign = _assign(zp, mu, valid, zz)

    onehot, n_ck, _ = _cluster_sums(zp, mask, assign, k)
    valid = n_ck > 0
    d2 = _sq_dists(zp, mu, zz)  # [C,Nmax,K]
    variances = (onehot * d2).sum(1) / (n_ck.clamp_min(1) * d)
    weights = n_ck / counts.clamp_min(1).unsqueeze(1).to(n_ck.dtype)
    variances = torch.where(valid, variances, torch.zeros_like(variances))
    if info is not None:
        info["iters"] = done
    if published:
        variances, weights = _compact_published(variances, weights, n_ck)
        valid = (counts > 0).unsqueeze(1).expand(-1, k).clone()
    return mu, variances, weights, valid


def _published_lloyd(zp, mask, counts, mu, assign, zz, iters: int):
    """The published kmeans_cuda loop, run for every class at once but stopped per class as it runs
    one class at a time. Its labels start at 0 and a class stops as soon as the new assignment equals
    the labels: at the first iteration already when every member is nearest to cluster 0 (its
    centroid then stays the seed). At the cap, the variances and weights come from the assignment the
    last update used, not from one more assignment. Returns (mu, labels, updates run)."""
    k = mu.shape[1]
    candidates = (counts > 0).unsqueeze(1).expand(-1, k)   # emptied clusters stay candidates
    labels = torch.zeros_like(assign)
    stopped = torch.zeros(zp.shape[0], dtype=torch.bool, device=zp.device)
    done = 0
    for _ in range(iters):
        stopped |= ((assign == labels) | ~mask).all(1)
        if bool(stopped.all()):
            break
        done += 1
        labels = torch.where(stopped.unsqueeze(1), labels, assign)
        _, n_ck, sums = _cluster_sums(zp, mask, labels, k)
        update = (n_ck > 0) & ~stopped.unsqueeze(1)
        mu = torch.where(update.unsqueeze(-1), sums / n_ck.clamp_min(1).unsqueeze(-1), mu)
        assign = _assign(zp, mu, candidates, zz)
    return mu, labels, done


def _compact(values: torch.Tensor, keep: torch.Tensor, fill: Optional[float]) -> torch.Tensor:
    """Per row, the kept values moved to the front in index order, the rest `fill` (None: the last
    kept value, or 0 when none is kept)."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    packed = values.gather(1, order)
    n_keep = keep.sum(1, keepdim=True)
    cols = torch.arange(values.shape[1], device=values.device).unsqueeze(0)
    if fill is None:
        last = packed.gather(1, (n_keep - 1).clamp_min(0)) * (n_keep > 0)
        return torch.where(cols < n_keep, packed, last)
    return torch.where(cols < n_keep, packed, torch.full_like(packed, fill))


def _compact_published(variances, weights, n_ck):
    """The published arrays: the variances of the non-empty clusters in index order, padded with the
    last of them; the weights of the clusters with more than one member, padded with 0.01. The loss
    reads both by cluster index, so after an empty cluster they belong to other clusters."""
    return _compact(variances, n_ck > 0, None), _compact(weights, n_ck > 1, 0.01)



@torch.no_grad()
def mixture_logdet(z, y, centroids, valid, weights, sigma: float) -> float:
    """Diagnostic: sum_k pi_k (1/D) log det(cov_k + sigma^2 I), averaged over classes present.

    Uses the n x n Gram form when a cluster has fewer members than dims (same determinant up to
    D log sigma^2, exact by Sylvester's identity). Not in any hot path: runs every 10 epochs.
    """
    if sigma <= 0:
        return float("nan")
    z = z.reshape(z.shape[0], -1).float()
    num_classes, k, d = centroids.shape
    d2 = ((z.unsqueeze(1) - centroids[y]) ** 2).sum(-1).masked_fill(~valid[y], float("inf"))
    assign = d2.argmin(1)
    gid = (y * k + assign).cpu()
    s2 = sigma**2
    per_class = torch.zeros(num_classes, dtype=torch.float64)
    seen = torch.zeros(num_classes, dtype=torch.bool)
    for g in torch.unique(gid).tolist():
        c, j = divmod(g, k)
        xs = z[gid.to(z.device) == g]
        xs = (xs - xs.mean(0)).double()
        n = xs.shape[0]
        if n <= d:
            gram = xs @ xs.T / (n * s2) + torch.eye(n, dtype=xs.dtype, device=xs.device)
            logdet = d * math.log(s2) + torch.linalg.slogdet(gram)[1].item()
        else:
            cov = xs.T @ xs / n + s2 * torch.eye(d, dtype=xs.dtype, device=xs.device)
            logdet = torch.linalg.slogdet(cov)[1].item()
        per_class[c] += float(weights[c, j]) * logdet / d
        seen[c] = True
    return float(per_class[seen].mean()) if seen.any() else float("nan")
