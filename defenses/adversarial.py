"""Attacker-aware training (ResSFL, `gan_adv[_stepN]`): the defender trains its own inversion decoder
D on the clean features and penalises the encoder when D reconstructs the input well. As published:

- D (`--adv_AE_type`, default res_normN4C64) is pre-trained before the first epoch for
  `--gan_pretrain_epochs` with MSE on the noisy features (z + sigma*eps, the run's Gaussian noise, none
  of the other obfuscations), its own Adam 1e-3 annealed (cosine) to 1e-5, batches of 256; on the
  defender's training split (`--gan_pretrain_data train`, our default) or the test split (`test`, the
  paper code's choice, which lets the defender see the images the attacks are scored on).
- Each training batch: N steps (3 without `_stepN`) of D's own Adam (1e-3, x0.2 at epochs 60/150/240
  of 240, scaled to the run's length) on clean features of the same batch from the encoder in eval
  mode (loss -SSIM, or MSE with `--gan_loss_type MSE`), then the encoder term with D in eval mode on
  the training forward's z: strength * max(0, SSIM(D(z), x) - `--ssim_threshold`) or -strength * MSE.
D's weights and optimizer state are part of the checkpoint, and its lr is a function of the epoch, so
`--resume` continues exactly. The defence steps its own optimizer inside `encoder_loss`, so the
trainer must not capture that step in a graph (`capturable = False`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from architectures.decoders import build_decoder, state_mismatch
from attacks.metrics import ssim_paper
from defenses.base import Defense
from defenses.noise import GaussianNoise
from defenses.registry import register_at
from utils import UserError, paper_epochs, step_decay

PAPER_DECODER_MILESTONES = (60, 150, 240)  # of 240 epochs: D's lr x0.2 from these (1-based) epochs on
DECODER_LR_DECAY = 0.2
PRETRAIN_BATCH = 256
PRETRAIN_LR_END = 1e-5


def decoder_milestones(num_epochs: int, spec: str = "paper") -> list:
    """Epochs (1-based) that already run D's lr reduced, scaled to the run's length like the main
    schedule (never before epoch 2); none when the main lr is constant (`--milestones none`)."""
    if str(spec).strip().lower() == "none":
        return []
    return paper_epochs(PAPER_DECODER_MILESTONES, num_epochs)


class AdversarialTraining(Defense):
    name = "gan_adv"
    capturable = False

    def __init__(self, strength: float, steps: int, feature_shape: Sequence[int], image_size: int,
                 mean: Sequence[float], std: Sequence[float], decoder: str = "res_normN4C64",
                 pretrain_epochs: int = 30, loss_type: str = "SSIM", ssim_threshold: float = 0.5,
                 lr: float = 1e-3, seed: int = 0, channels: Optional[int] = None, sigma: float = 0.0,
                 milestones: Sequence[int] = (), pretrain_data: str = "train", init: str = "default"):
        if loss_type not in ("SSIM", "MSE"):
            raise UserError(f"--gan_loss_type must be SSIM or MSE (got '{loss_type}')")
        if pretrain_data not in ("train", "test"):
            raise UserError(f"--gan_pretrain_data must be train or test (got '{pretrain_data}')")
        if init not in ("default", "xavier"):
            raise UserError(f"--gan_adv_init must be default or xavier (got '{init}')")
        self.strength, self.steps = float(strength), int(steps)
        self.pretrain_epochs, self.loss_type = int(pretrain_epochs), loss_type
        self.ssim_threshold, self.seed = float(ssim_threshold), int(seed)
        self.noise, self.pretrain_data = GaussianNoise(sigma), pretrain_data
        self.lr, self.milestones = float(lr), sorted(int(m) for m in milestones)
        channels = len(mean) if channels is None else channels
        self.decoder = build_decoder(decoder, feature_shape, image_size, out_channels=channels)
        if init == "xavier":
            self.decoder.apply(xavier_init)
        self.decoder.requires_grad_(False)  # only its own steps train it; the encoder loss must not
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pretrained = False
        # The encoder whose eval-mode features D trains on (bound by on_train_start); without one
        # (a defence used on its own) D trains on the features it is given.
        self.encoder: Optional[torch.nn.Module] = None
        self._ssim_sum = self._n = None  # running defender-decoder quality over an epoch (no sync per batch)

    # ------------------------------------------------------------------ pieces
    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The network input back in [0, 1], the decoder's target."""
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0.0, 1.0)

    def decoder_step(self, z: torch.Tensor, target: torch.Tensor, opt: Optional[torch.optim.Optimizer] = None,
                     loss_type: Optional[str] = None) -> torch.Tensor:
        """One Adam step of D (with `opt`, default its own) on detached features; returns D's batch
        SSIM (detached)."""
        opt = self.opt if opt is None else opt
        loss_type = loss_type or self.loss_type
        self.decoder.train()
        self.decoder.requires_grad_(True)
        try:
            with torch.enable_grad():
                rec = self.decoder(z.detach())
                ssim = ssim_paper(rec, target).mean()
                loss = -ssim if loss_type == "SSIM" else F.mse_loss(rec, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)  # no stale gradients held between batches
        finally:
            self.decoder.requires_grad_(False)
        return ssim.detach()

    def lr_at(self, epoch: int) -> float:
        """D's lr in the epoch with 0-based index `epoch`."""
        return step_decay(self.lr, epoch, self.milestones, DECODER_LR_DECAY)

    @torch.no_grad()
    def eval_features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The features D trains on: the bound encoder's in eval mode (BatchNorm on its running
        statistics, as the published step computes them), else `z` itself."""
        if self.encoder is None:
            return z.detach()
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            return self.encoder(x).float()
        finally:
            self.encoder.train(was_training)

    def penalty(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The encoder's term, with D in eval mode (its BatchNorm statistics are not touched)."""
        self.decoder.eval()
        rec = self.decoder(z)
        if self.loss_type == "SSIM":
            return self.strength * (ssim_paper(rec, target).mean() - self.ssim_threshold).clamp_min(0.0)
        return -self.strength * F.mse_loss(rec, target)

    # ------------------------------------------------------------------ Defense interface
    def encoder_loss(self, z, x, y, lr):
        if self.strength == 0:
            return None
        target = self.images(x)
        clean = self.eval_features(x, z)  # no dropout in the encoder: the same for every step
        for _ in range(self.steps):
            ssim = self.decoder_step(clean, target)
        if self._ssim_sum is None:
            self._ssim_sum, self._n = torch.zeros((), device=z.device), 0
        self._ssim_sum += ssim
        self._n += 1
        return self.penalty(z, target)

    def on_train_start(self, trainer) -> dict:
        """Binds the encoder, then pre-trains D (once: a resumed run has it in its state)."""
        self.encoder = trainer.model.encoder  # pruning changes its tensors in place, not the module
        if self.pretrained or self.strength == 0:
            return {}
        from datasets import BatchLoader

        b = trainer.bundle
        split = b.train if self.pretrain_data == "train" else b.test
        loader = BatchLoader(split, PRETRAIN_BATCH, mean=b.mean, std=b.std, device=trainer.device,
                             shuffle=True, seed=self.seed + 7919, drop_last=len(split) > PRETRAIN_BATCH)
        # Its own optimizer and schedule, as published: the per-batch optimizer starts afresh after.
        opt = torch.optim.Adam(self.decoder.parameters(), lr=self.lr)
        ssim = None
        bar = tqdm(range(self.pretrain_epochs), desc="gan_adv: pre-training the defender decoder",
                   disable=not trainer.progress, leave=False, unit="epoch")
        for epoch in bar:
            for g in opt.param_groups:
                g["lr"] = self.pretrain_lr(epoch)
            loader.set_epoch(epoch)
            total, n = torch.zeros((), device=trainer.device), 0
            for x, _ in loader:
                z = self.noise.obfuscate(self.eval_features(x, None), training=True)
                total += self.decoder_step(z, self.images(x), opt=opt, loss_type="MSE")
                n += 1
            ssim = (total / max(n, 1)).item()
            bar.set_postfix(ssim=f"{ssim:.3f}")
        bar.close()
        self.pretrained = True
        return {} if ssim is None else {"adv_pretrain_ssim": ssim}

    def pretrain_lr(self, epoch: int) -> float:
        """Cosine annealing from lr to 1e-5 over the pre-training epochs (0-based `epoch`)."""
        t = epoch / max(self.pretrain_epochs, 1)
        return PRETRAIN_LR_END + (self.lr - PRETRAIN_LR_END) * (1 + math.cos(math.pi * t)) / 2

    def on_epoch_start(self, trainer, epoch):
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(epoch)

    def on_epoch_end(self, trainer):
        if not self._n:
            return {}
        logs = {"adv_decoder_ssim": (self._ssim_sum / self._n).item()}
        self._ssim_sum, self._n = None, 0
        return logs

    def state_dict(self):
        return {"decoder": {k: v.detach().cpu() for k, v in self.decoder.state_dict().items()},
                "optimizer": self.opt.state_dict(), "pretrained": self.pretrained}

    def load_state_dict(self, state):
        why = state_mismatch(self.decoder, state["decoder"])
        if why:  # e.g. a run checkpointed before res_normN{N}C{C} became the published decoder
            raise UserError(f"the checkpoint's gan_adv defender decoder does not fit today's {self.decoder.name} "
                            f"({why}); it cannot resume: use --force to train the run again")
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["optimizer"])  # Adam moves its state to the parameters' device
        self.pretrained = bool(state["pretrained"])

    def to(self, device):
        self.decoder.to(device)
        for st in self.opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
        return self


def xavier_init(m: nn.Module) -> None:
    """The published init_weights: Xavier-uniform weights, zero biases, for exactly these layer types
    (the published check is `type(m) ==`, so subclasses keep their own init)."""
    if type(m) in (nn.Linear, nn.Conv2d, nn.ConvTranspose2d):
        nn.init.xavier_uniform_(m.weight, gain=1.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@register_at("gan_adv")
def _build(opts, ctx):
    if ctx.feature_shape is None or ctx.image_size is None or ctx.mean is None:
        raise UserError("gan_adv needs the model's feature shape and the data's image size and statistics")
    c = ctx.cfg
    return AdversarialTraining(
        opts.strength, opts.gan_adv_steps, ctx.feature_shape, ctx.image_size, ctx.mean, ctx.std,
        decoder=str(c.get("adv_AE_type") or "res_normN4C64"),
        pretrain_epochs=int(c.get("gan_pretrain_epochs", 30)), loss_type=str(c.get("gan_loss_type") or "SSIM"),
        ssim_threshold=float(c.get("ssim_threshold", 0.5)), seed=int(c.get("random_seed", 0)),
        sigma=ctx.sigma,
        milestones=decoder_milestones(int(c.get("num_epochs", 240)), str(c.get("milestones", "paper"))),
        pretrain_data=str(c.get("gan_pretrain_data") or "train"), init=str(c.get("gan_adv_init") or "default"))
