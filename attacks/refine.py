"""Decoder-then-likelihood attack (`rmle_from_decoder`), an adaptive attacker beyond the paper's: start
from the trained decoder's reconstruction and refine it white-box under the known noise model.

Per observed z~ it minimises over x^ (x^ = sigmoid(w), in [0,1]), per image,
    NLL(z~ | f(x^))  +  w_prior * ||x^ - decoder(z~)||^2  +  tv_weight * TV(x^)
with NLL = ||f(x^) - z~||^2 / 2σ² for Gaussian noise of std σ, ||f(x^) - z~||_1 / b for Laplace noise of
scale b (local_dp_laplace), both summed over the features, and TV summed over neighbour pairs (scaled
from rMLE's mean): a MAP estimate with a Gaussian prior around the decoder's output. The attacker picks
w_prior among its candidates, or keeps the decoder's output unrefined, by the MSE on its own held-out
images (never the scored ones), so on those images it is no worse than the decoder it starts from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from attacks.base import Attack, Context, Fitted, to_unit
from attacks.decoder import load_decoder
from attacks.optimization import descend, total_variation
from attacks.specs.rmle_from_decoder import noise_model, prior_weights
from utils import UserError, normalize

# Held-out images that pick the prior weight (each candidate refines all of them): at most this many,
# and no more than the attack scores (--rfd_max_images), so choosing costs what scoring does per candidate.
SELECT_MAX = 256


class DecoderLikelihoodAttack(Attack):
    name = "rmle_from_decoder"

    def __init__(self, start, steps: int = 100, lr: float = 0.01, weights: tuple = (1.0, 10.0, 100.0),
                 tv_weight: float = 0.1, noise: tuple = ("gaussian", 1.0), select_on_fit: bool = False,
                 batch_size: int = 256, **kw):
        if steps < 1 or lr <= 0 or tv_weight < 0 or not weights or min(weights) < 0 or noise[1] <= 0:
            raise UserError(f"rmle_from_decoder needs --rfd_steps >= 1, --rfd_lr > 0, --rfd_tv_weight >= 0, prior "
                            f"weights >= 0 (got {steps}, {lr}, {tv_weight}, {weights})")
        super().__init__(batch_size=batch_size, **kw)
        self.start = Path(start) if start else None
        self.steps, self.lr, self.tv_weight = int(steps), float(lr), float(tv_weight)
        self.weights, self.noise, self.select_on_fit = tuple(float(w) for w in weights), tuple(noise), select_on_fit
        self.chosen: Optional[float] = None
        self.selection: dict = {}

    def label(self) -> str:
        return "rmle_from_decoder"

    def epochs_done(self) -> int:
        return self.steps

    def settings(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "prior_weights": list(self.weights), "tv_weight": self.tv_weight,
                "noise": list(self.noise), "seed": self.seed, "max_images": self.eval_limit,
                "start": self.start.name if self.start else None,
                # the weight the attacker chose (None: the decoder's output, unrefined) and why
                "chosen_prior_weight": self.chosen, "selection_mse": self.selection,
                "selected_on": "fit" if self.select_on_fit else "heldout"}

    def _decoder(self, ctx: Context):
        if self.start is None or not self.start.exists():
            raise UserError(f"rmle_from_decoder starts from the decoder the decoder attack saves ({self.start}), "
                            "which does not exist: run --attacks decoder,rmle_from_decoder")
        decoder = load_decoder(self.start, ctx.device)
        if tuple(decoder.feature_shape) != tuple(ctx.feature_shape):
            raise UserError(f"saved decoder {self.start} inverts features {tuple(decoder.feature_shape)}, not this "
                            f"run's {tuple(ctx.feature_shape)}; rerun the decoder attack")
        return decoder

    def _selection_images(self, ctx: Context) -> torch.Tensor:
        """The attacker's own held-out images; without any (--attacker_data published holds out the scored
        images), a seeded tenth of its fit images, which the decoder saw in training (a biased pick)."""
        most = min(SELECT_MAX, self.eval_limit or SELECT_MAX)
        if not self.select_on_fit and ctx.x_held is not None:
            return ctx.x_held[:most]
        g = torch.Generator().manual_seed(self.seed + 7)
        n = max(1, min(most, len(ctx.x_fit) // 10))
        return ctx.x_fit[torch.randperm(len(ctx.x_fit), generator=g)[:n].to(ctx.x_fit.device)]

    def fit(self, ctx: Context) -> Fitted:
        decoder = self._decoder(ctx)
        x_pick = self._selection_images(ctx)
        z_pick = self.query(ctx, x_pick)
        for weight in (None, *self.weights):
            err = [(self.reconstruct(ctx, decoder, z_pick[s:s + self.batch_size], weight)
                    - to_unit(x_pick[s:s + self.batch_size])).pow(2).flatten(1).mean(1)
                   for s in range(0, len(x_pick), self.batch_size)]
            self.selection["decoder" if weight is None else f"{weight:g}"] = torch.cat(err).mean().item()
        best = min(self.selection, key=self.selection.get)  # ties: the decoder alone, listed first
        self.chosen = None if best == "decoder" else float(best)
        self.log(f"rmle_from_decoder: prior weight {best} (MSE on {len(x_pick)} "
                 f"{'fit' if self.select_on_fit else 'held-out'} images: "
                 + ", ".join(f"{k} {v:.4f}" for k, v in self.selection.items()) + ")")
        return Fitted(final=lambda z: self.reconstruct(ctx, decoder, z, self.chosen), model=None)

    def reconstruct(self, ctx: Context, decoder, z_tilde: torch.Tensor, weight: Optional[float]) -> torch.Tensor:
        with torch.no_grad():
            x0 = decoder(z_tilde).float().clamp(1e-3, 1 - 1e-3)
        if weight is None:
            return x0
        kind, scale = self.noise
        target = z_tilde.detach().flatten(1)
        pixels = x0[0].numel()

        def objective(x):
            r = ctx.encoder(normalize(x, ctx.mean, ctx.std)).flatten(1) - target
            nll = r.pow(2).sum(1) / (2 * scale ** 2) if kind == "gaussian" else r.abs().sum(1) / scale
            prior = (x - x0).pow(2).flatten(1).sum(1)
            return nll + weight * prior + self.tv_weight * pixels * total_variation(x)

        return descend(torch.log(x0) - torch.log1p(-x0), objective, self.steps, self.lr,
                       f"rmle_from_decoder ({z_tilde.shape[0]} images, prior {weight:g})", self.progress)


def from_settings(s: dict, common: dict, place) -> DecoderLikelihoodAttack:
    """The registered factory (attacks/specs/rmle_from_decoder.py)."""
    return DecoderLikelihoodAttack(
        start=place.start, steps=int(s["rfd_steps"]), lr=float(s["rfd_lr"]),
        weights=prior_weights(s["rfd_prior_weights"]), tv_weight=float(s["rfd_tv_weight"]),
        noise=noise_model(s, place.view), select_on_fit=str(s.get("attacker_data") or "split") != "split",
        eval_limit=s.get("rfd_max_images"), **common)
