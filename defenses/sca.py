"""SCA (`--AT_regularization SCA_new`): a sparse-coding layer at the end of the device encoder.

The published default sweep (its run_exp.sh: SCA_new, strength 0.3) puts one extra layer between the
device half of the bottleneck (conv [+ReLU]) and the encoder's last Sigmoid / BatchNorm, so every
feature the device sends is a sparse code's reconstruction. The published code adds no loss term and
reads the strength only to switch the option on (strength 0 turns it off, like every AT option).
Two layers, as published (docs/defences.md, "SCA"):

- VGG: `DictionaryLCA`, a dense dictionary W (N x D, rows unit-norm at init, trained with the encoder),
  one LCA step from u = 0: u = S_lam(x W^T) with the signed soft threshold S, lam = 0.01, and the
  layer returns u W, reshaped to x's shape. N = D = C*H*W, except N = 1024 when z is 12x12 (the
  published FaceScrub setting: its rule keys N on the dataset's feature size 12).
- ResNet: `ConvLCA`, the lcapt package's LCAConv2D as the published code builds it (8 -> 8 neurons,
  5x5 kernels, stride 1, 'same' padding, every other setting lcapt's default): each sample is
  standardised (zero mean, unit std), then 1000 LCA steps of size 1/tau (tau 100) with non-negative
  soft threshold 0.25 and lateral inhibition by the dictionary's own correlations; the layer returns
  the activations. The dictionary is frozen (lcapt's req_grad=False), but gradients reach the encoder
  through all 1000 steps.

The layers are built by `device_tail(cfg)`, the factory `architectures.build_split_model` places after
the bottleneck; the `SCA` defence itself sends z unchanged (the layer is part of the encoder, so the
attacker queries it too).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from defenses.at_options import at_options
from defenses.base import Defense
from defenses.registry import register_at
from utils import UserError

DENSE_ALPHA, DENSE_LAMBDA, DENSE_STEPS = 0.05, 0.01, 1   # published VGG layer settings
FACESCRUB_NEURONS = 1024                                 # published N when z is 12x12
CONV_NEURONS, CONV_KERNEL = 8, 5                         # published ResNet LCAConv2D settings
CONV_LAMBDA, CONV_TAU, CONV_STEPS = 0.25, 100.0, 1000    # lcapt defaults the published call keeps


def dense_neurons(feature_shape: Sequence[int]) -> int:
    c, h, w = (int(v) for v in feature_shape)
    return FACESCRUB_NEURONS if (h, w) == (12, 12) else c * h * w


class DictionaryLCA(nn.Module):
    """Dense LCA on the flattened features; returns the sparse code's reconstruction (same shape as x).

    Parameter name `W` and shape (N, D) are the published checkpoint's (`<i>.W`)."""

    def __init__(self, feature_shape: Sequence[int], num_neurons: Optional[int] = None, alpha: float = DENSE_ALPHA,
                 lmbda: float = DENSE_LAMBDA, steps: int = DENSE_STEPS):
        super().__init__()
        dim = int(torch.tensor(feature_shape).prod())
        n = dense_neurons(feature_shape) if num_neurons is None else int(num_neurons)
        self.alpha, self.lmbda, self.steps = float(alpha), float(lmbda), int(steps)
        self.W = nn.Parameter(F.normalize(torch.randn(n, dim), p=2, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        drive = flat @ self.W.t()
        # From u = 0 the first step's inhibition and leak vanish: u = S(drive). Later steps (none in the
        # published setting) take the full update u <- S(u + drive - u W W^T - alpha u).
        u = _soft(drive, self.lmbda)
        if self.steps > 1:
            gram = self.W @ self.W.t()
            for _ in range(self.steps - 1):
                u = _soft(u + drive - u @ gram - self.alpha * u, self.lmbda)
        return (u @ self.W).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"neurons={self.W.shape[0]}, dim={self.W.shape[1]}, lambda={self.lmbda}, steps={self.steps}"


def _soft(u: torch.Tensor, lmbda: float) -> torch.Tensor:
    return torch.sign(u) * F.relu(u.abs() - lmbda)


class ConvLCA(nn.Module):
    """Convolutional LCA (stride 1, odd kernel, 'same' padding); returns the non-negative activations.

    Parameter `weights` (out, in, k, k) and the 0-d buffer `forward_pass` are the published checkpoint's
    names (`<i>.weights`, `<i>.forward_pass`). lcapt counts forward passes in that buffer and reads it
    only for its own learning-rate schedule, which the published code never uses: here it stays as
    loaded, so a model's state does not depend on how often it was run."""

    def __init__(self, in_neurons: int, out_neurons: int = CONV_NEURONS, kernel: int = CONV_KERNEL,
                 lmbda: float = CONV_LAMBDA, tau: float = CONV_TAU, steps: int = CONV_STEPS):
        super().__init__()
        if kernel % 2 != 1 or steps < 1:
            raise ValueError("ConvLCA needs an odd kernel and at least one step")
        self.lmbda, self.tau, self.steps, self.kernel = float(lmbda), float(tau), int(steps), int(kernel)
        w = nn.init.trunc_normal_(torch.empty(out_neurons, in_neurons, kernel, kernel))  # lcapt's init
        w = w / (w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        self.weights = nn.Parameter(w, requires_grad=False)
        self.register_buffer("forward_pass", torch.tensor(1))

    def connectivity(self) -> torch.Tensor:
        """Lateral inhibition kernels (out, out, 2k-1, 2k-1): the dictionary's cross-correlations, with a
        neuron's zero-shift self-term removed."""
        w = self.weights
        conns = F.conv2d(w, w, padding=self.kernel - 1)
        c = self.kernel - 1
        idx = torch.arange(w.shape[0], device=w.device)
        mask = torch.ones_like(conns)
        mask[idx, idx, c, c] = 0.0
        return conns * mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        x = x / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-12)
        pad = self.kernel // 2
        drive = F.conv2d(x, self.weights, padding=pad)
        conns = self.connectivity()
        states = torch.zeros_like(drive)
        # lcapt returns the activations computed at the start of its last step, i.e. from the states
        # after steps - 1 updates.
        for _ in range(self.steps - 1):
            acts = F.relu(states - self.lmbda)
            inhib = F.conv2d(acts, conns, padding=self.kernel - 1)
            states = states + (drive - states - inhib) / self.tau
        return F.relu(states - self.lmbda)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weights.shape
        return f"{i}->{o}, kernel={k}, lambda={self.lmbda}, tau={self.tau}, steps={self.steps}"


def sca_layer(arch: str, feature_shape: Sequence[int]) -> nn.Module:
    """The published SCA layer for `arch` on bottleneck features of shape (C, H, W)."""
    if str(arch).startswith("resnet"):
        return ConvLCA(int(feature_shape[0]))
    return DictionaryLCA(feature_shape)


def device_tail(cfg: dict) -> Optional[Callable[[Sequence[int]], nn.Module]]:
    """Factory of the layer `build_split_model` puts after the bottleneck, or None when SCA is off."""
    if not at_options(cfg, warn=False).sca:
        return None
    if str(cfg.get("bottleneck_option") or "None").lower() in ("none", ""):
        # The published models add the layer only inside the bottleneck (and silently drop it without one).
        raise UserError("--AT_regularization SCA_new needs a bottleneck (e.g. --bottleneck_option noRELU_C8S1): "
                        "the published SCA layer sits after the device half of the bottleneck")
    arch = str(cfg["arch"])
    return lambda shape: sca_layer(arch, shape)


class SCA(Defense):
    """The sparse-coding layer lives in the encoder (see device_tail): nothing to add on the features sent."""

    name = "sca"


@register_at("sca")
def _build(opts, ctx):
    return SCA()
