"""White-box optimisation attack, rMLE (He et al., 2019): per target image, search the input whose
features match the intercepted ones.

The attacker knows the encoder's weights. For the observed z~ it minimises over w (x^ = sigmoid(w),
so x^ stays in [0,1])
    mean_d (f(x^)_d - z~_d)^2  +  tv_weight * TV(x^),
with TV(x) the mean absolute difference of vertically and horizontally neighbouring pixels. Under
Gaussian feature noise the squared error is the negative log-likelihood up to scale, hence the name;
the noise level only trades the data term against `tv_weight`. Many images are optimised at once
(one Adam over a (B, C, S, S) tensor; images do not interact, since the loss is a sum over images).
The search starts from the attacker's mean image, so it starts at the mean-image baseline.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from attacks.base import Attack, Context, Fitted, to_unit
from utils import UserError, normalize


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute neighbour difference per image (anisotropic TV)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


class RMLEAttack(Attack):
    name = "rmle"

    def __init__(self, steps: int = 500, lr: float = 0.05, tv_weight: float = 0.05, batch_size: int = 500, **kw):
        if steps < 1 or lr <= 0 or tv_weight < 0:
            raise UserError(f"rMLE needs --rmle_steps >= 1, --rmle_lr > 0, --tv_weight >= 0 "
                            f"(got {steps}, {lr}, {tv_weight})")
        super().__init__(batch_size=batch_size, **kw)
        self.steps, self.lr, self.tv_weight = int(steps), float(lr), float(tv_weight)

    def label(self) -> str:
        return "rmle"

    def epochs_done(self) -> int:
        return self.steps

    def settings(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "tv_weight": self.tv_weight, "batch_size": self.batch_size,
                "seed": self.seed, "max_images": self.eval_limit}

    def fit(self, ctx: Context) -> Fitted:
        start = to_unit(ctx.x_fit).mean(0, keepdim=True).clamp(0.01, 0.99)
        w0 = torch.log(start) - torch.log1p(-start)  # logit: sigmoid(w0) is the mean image
        return Fitted(final=lambda z: self.invert(ctx, z, w0))

    def invert(self, ctx: Context, z_tilde: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        """x^ in [0,1] for a batch of observed features; the encoder stays frozen."""
        target = z_tilde.detach().flatten(1)

        def objective(x):
            data = (ctx.encoder(normalize(x, ctx.mean, ctx.std)).flatten(1) - target).pow(2).mean(1)
            return data + self.tv_weight * total_variation(x)

        w = w0.expand(z_tilde.shape[0], -1, -1, -1)
        return descend(w, objective, self.steps, self.lr, f"rMLE ({z_tilde.shape[0]} images)", self.progress)


def descend(w0: torch.Tensor, objective, steps: int, lr: float, desc: str, progress: bool) -> torch.Tensor:
    """Adam on the logits w of a batch of images (x^ = sigmoid(w), so x^ stays in [0,1]) minimising
    objective(x^) -> (B,) per-image losses, summed (images do not interact); returns sigmoid(w)."""
    w = w0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    with torch.enable_grad():
        for _ in bar:
            loss = objective(torch.sigmoid(w)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    bar.close()
    return torch.sigmoid(w.detach())

def from_settings(s: dict, common: dict, place) -> RMLEAttack:
    """The registered factory (attacks/specs/rmle.py)."""
    return RMLEAttack(steps=int(s["rmle_steps"]), lr=float(s["rmle_lr"]), tv_weight=float(s["tv_weight"]),
                      eval_limit=s["rmle_max_images"], **common)
