"""GAN-based inversion attack (DESIGN §8): a decoder-shaped generator trained with a WGAN-GP critic
plus a heavily weighted pixel MSE, on the attacker's own (image, obfuscated feature) pairs.

The generator starts from the run's saved decoder of the same attack mode when one with the same
architecture and shapes exists (the decoder attack saves it), else from scratch; the log says which.
Every `n_critic` critic steps one generator step. Queries go through the deployed obfuscation with
fresh randomness, as in the decoder attack.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from architectures.decoders import build_decoder, state_mismatch
from architectures.discriminators import build_critic
from attacks.base import Context, TrainedAttack, to_unit
from attacks.specs.gan import gan_epochs
from utils import UserError, load_checkpoint


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean over the batch of (||grad_x critic(x_hat)||_2 - 1)^2 at x_hat = eps*real + (1-eps)*fake,
    one eps ~ U(0,1) per sample (WGAN-GP). Differentiable with respect to the critic's parameters."""
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, gp_weight: float = 10.0) -> torch.Tensor:
    """-(E[D(x)] - E[D(G(z~))]) + gp_weight * GP."""
    fake = fake.detach()
    return -(critic(real).mean() - critic(fake).mean()) + gp_weight * gradient_penalty(critic, real, fake)


class GANAttack(TrainedAttack):
    name = "gan"

    def __init__(self, generator: str = "res_normN8C64", epochs: int = 150, batch_size: int = 128,
                 n_critic: int = 10, mse_weight: float = 1500.0, gp_weight: float = 10.0, lr_d: float = 5e-3,
                 lr_g: float = 5e-4, t_max: int = 300, init_from=None, loop: str = "ours", **kw):
        if n_critic < 1 or mse_weight < 0 or lr_d <= 0 or lr_g <= 0 or t_max < 1:
            raise UserError(f"GAN attack needs --n_critic >= 1, --mse_weight >= 0 and positive rates "
                            f"(got n_critic {n_critic}, mse_weight {mse_weight}, lr_D {lr_d}, lr_G {lr_g})")
        if loop not in ("ours", "published"):
            raise UserError(f"--gan_loop must be ours or published (got '{loop}')")
        super().__init__(epochs=epochs, batch_size=batch_size, **kw)
        self.generator, self.loop = generator, loop
        self.n_critic, self.mse_weight, self.gp_weight = int(n_critic), float(mse_weight), float(gp_weight)
        self.lr_d, self.lr_g, self.t_max = float(lr_d), float(lr_g), int(t_max)
        self.init_from = Path(init_from) if init_from else None
        self.initialised_from: Optional[str] = None

    def label(self) -> str:
        return self.generator

    def settings(self) -> dict:
        return {"generator": self.generator, "epochs": self.epochs, "batch_size": self.batch_size,
                "n_critic": self.n_critic, "mse_weight": self.mse_weight, "gp_weight": self.gp_weight,
                "lr_d": self.lr_d, "lr_g": self.lr_g, "t_max": self.t_max, "seed": self.seed,
                "init_from": self.initialised_from or "scratch",
                # only when set, so checkpoints made before the flag still resume
                **({"loop": self.loop} if self.loop != "ours" else {})}

    def _initial_generator(self, ctx: Context) -> nn.Module:
        gen = build_decoder(self.generator, ctx.feature_shape, ctx.image_size, out_channels=ctx.channels)
        path = self.init_from
        if path is None or not path.exists():
            self.log(f"GAN generator {self.generator}: from scratch (no saved decoder at {path})")
            return gen
        fix = "delete it (the GAN then starts from scratch) or rerun the decoder attack"
        ck = load_checkpoint(path, "cpu", fix=fix)
        if not isinstance(ck, dict):
            raise UserError(f"{path} holds a {type(ck).__name__}, not a saved decoder; {fix}")
        wanted = (self.generator, list(ctx.feature_shape), ctx.image_size, ctx.channels)
        found = (ck.get("arch"), list(ck.get("feature_shape", [])), ck.get("image_size"), ck.get("out_channels"))
        if wanted != found:
            self.log(f"GAN generator {self.generator}: from scratch (saved decoder {path} is {found[0]} for "
                     f"features {tuple(found[1])}, not {wanted[0]} for {tuple(wanted[1])})")
            return gen
        try:
            why = state_mismatch(gen, ck["state_dict"])
        except (KeyError, TypeError, AttributeError) as e:  # its record matches, so the file was altered
            raise UserError(f"saved decoder {path} does not hold the weights of a {self.generator} "
                            f"({type(e).__name__}); {fix}") from None
        if why:  # e.g. a decoder saved before res_normN{N}C{C} became the published decoder
            self.log(f"GAN generator {self.generator}: from scratch (saved decoder {path} does not fit today's "
                     f"{self.generator}: {why}; rerun the decoder attack to warm-start from it)")
            return gen
        gen.load_state_dict(ck["state_dict"], strict=True)
        self.initialised_from = str(path.name)
        self.log(f"GAN generator {self.generator}: initialised from the saved decoder {path}")
        return gen

    def build(self, ctx: Context) -> None:
        self.initialised_from = None
        self.model = self._initial_generator(ctx).to(ctx.device)
        self.critic = build_critic(ctx.channels, ctx.image_size).to(ctx.device)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=self.lr_g, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=self.lr_d, betas=(0.5, 0.999))
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=self.t_max)
        self.sched_d = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_d, T_max=self.t_max)
        self.step = 0

    def training_state(self) -> dict:
        return {"critic": self.critic.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(), "step": self.step}

    def checkpoint_mismatch(self, ck: dict) -> Optional[str]:
        return super().checkpoint_mismatch(ck) or state_mismatch(self.critic, ck["training"]["critic"])

    def load_training_state(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        for name in ("opt_g", "opt_d", "sched_g", "sched_d"):
            getattr(self, name).load_state_dict(state[name])
        self.step = int(state["step"])

    def train_epoch(self, ctx: Context, epoch: int, gen: torch.Generator) -> dict:
        dev = ctx.device
        sums = {k: torch.zeros((), device=dev) for k in ("loss", "critic_loss", "gen_loss")}
        n_critic_steps, n_gen_steps = 0, 0
        self.critic.train()
        published = self.loop == "published"
        for idx in self.batches(ctx, gen):
            with torch.no_grad():
                z_clean = self.fit_features(ctx, idx)
                z = ctx.obfuscate(z_clean)
                # The published critic step draws its fakes with the generator in eval mode.
                self.model.train(not published)
                fake = self.model(z)
                self.model.train()
            real = to_unit(ctx.x_fit[idx])
            d_loss = critic_loss(self.critic, real, fake, self.gp_weight)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            sums["critic_loss"] += d_loss.detach()
            sums["loss"] += (fake - real).pow(2).mean()
            n_critic_steps += 1
            self.step += 1
            if self.step % self.n_critic == 0:
                if published:  # its generator step queries again: fresh noise
                    with torch.no_grad():
                        z = ctx.obfuscate(z_clean)
                fake = self.model(z)
                mse = nn.functional.mse_loss(fake, real)
                g_loss = -self.critic(fake).mean() + self.mse_weight * mse
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()  # the critic's gradients from here are cleared before its next step
                self.opt_g.step()
                sums["gen_loss"] += g_loss.detach()
                n_gen_steps += 1
        lr_g = self.opt_g.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # With little data an epoch may hold no generator step; the schedule is per epoch regardless.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.sched_g.step()
        self.sched_d.step()
        n_critic_steps = max(1, n_critic_steps)
        return {"loss": sums["loss"] / n_critic_steps, "critic_loss": sums["critic_loss"] / n_critic_steps,
                "gen_loss": sums["gen_loss"] / max(1, n_gen_steps), "lr": torch.tensor(lr_g)}


def from_settings(s: dict, common: dict, place) -> GANAttack:
    """The registered factory (attacks/specs/gan.py): the generator starts from the decoder at place.start."""
    return GANAttack(generator=s["gan_AE_type"], epochs=gan_epochs(s), batch_size=int(s["gan_batch_size"]),
                     n_critic=int(s["n_critic"]), mse_weight=float(s["mse_weight"]), lr_d=float(s["lr_D"]),
                     lr_g=float(s["lr_G"]), init_from=place.start, checkpoint_path=place.checkpoint,
                     checkpoint_every=int(s["checkpoint_every"]), loop=str(s["gan_loop"]), **common)
