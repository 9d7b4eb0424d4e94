"""Obfuscations on what the device sends: dropout, per-sample top-k pruning, local DP noise.

They are part of the sent features, so they stay on at inference and in every attack query
(`training` is ignored on purpose): a defence is scored on what it actually sends. They run after
the Gaussian noise in the published order, z -> noise -> local DP -> dropout -> top-k, so dropout and
top-k zero what the noise would otherwise have filled (the order is set in defenses/at_options.py).
"""
from __future__ import annotations

import math

import torch

from defenses.base import Defense
from defenses.registry import register_at

LOCAL_DP_DELTA = 1e-4


class Dropout(Defense):
    """Zeroes each element with probability p. No 1/(1-p) rescale of the kept ones, as published:
    the server learns on the shrunken features, and the sent values are the defence's output."""

    name = "dropout"

    def __init__(self, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout probability must be in [0, 1)")
        self.p = float(p)

    def obfuscate(self, z, training):
        if self.p == 0.0:
            return z
        return z * (torch.rand_like(z) >= self.p).to(z.dtype)


class TopKPrune(Defense):
    """Zeroes, per sample, the fraction p of entries with the smallest magnitude (round(p*D) of D).

    Per sample on purpose: the paper code thresholds over the whole batch, so there a sample's
    sent features depend on which other samples share its batch. The paper code also ranks signed
    values, not magnitudes: the same for non-negative (sigmoid) features, but after the noise an entry
    pushed below zero is the first it drops and the last we would (docs/differences.md).
    """

    name = "topkprune"

    def __init__(self, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError("top-k prune fraction must be in [0, 1)")
        self.p = float(p)

    def obfuscate(self, z, training):
        flat = z.reshape(z.shape[0], -1)
        d = flat.shape[1]
        keep = d - int(round(self.p * d))
        if keep >= d:
            return z
        idx = flat.detach().abs().topk(keep, dim=1, sorted=False).indices
        mask = torch.zeros_like(flat).scatter_(1, idx, 1.0)
        return (flat * mask).reshape(z.shape)


class LocalDP(Defense):
    """Local differential-privacy noise with epsilon = the strength: Gaussian of std
    sqrt(2 ln(1.25/delta))/eps with delta = 1e-4 (`local_dp`, the published default), or Laplace of
    scale 1/eps (`local_dp_laplace`); unit sensitivity, as published."""

    name = "local_dp"

    def __init__(self, epsilon: float, mechanism: str = "gaussian", delta: float = LOCAL_DP_DELTA):
        if epsilon <= 0:
            raise ValueError("local DP needs epsilon > 0")
        if mechanism not in ("laplace", "gaussian"):
            raise ValueError("mechanism must be 'laplace' or 'gaussian'")
        self.epsilon, self.mechanism, self.delta = float(epsilon), mechanism, float(delta)
        self.scale = 1.0 / self.epsilon if mechanism == "laplace" else \
            math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.epsilon

    def obfuscate(self, z, training):
        if self.mechanism == "gaussian":
            return z + self.scale * torch.randn_like(z)
        # Laplace by inverse CDF from one uniform draw: -b * sign(u) * log(1 - 2|u|), u in (-1/2, 1/2)
        u = torch.rand_like(z).sub_(0.5).clamp_(-0.5 + 1e-7, 0.5 - 1e-7)
        return z - self.scale * u.sign() * torch.log1p(-2.0 * u.abs())


@register_at("dropout")
def _build_dropout(opts, ctx):
    return Dropout(opts.dropout)


@register_at("topkprune")
def _build_topk(opts, ctx):
    return TopKPrune(opts.topk)


@register_at("local_dp")
def _build_local_dp(opts, ctx):
    return LocalDP(opts.strength, opts.local_dp)
