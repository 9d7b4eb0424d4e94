"""Attacker-aware training (ResSFL, `gan_adv[_stepN]`): the defender trains its own inversion decoder
D on the clean features and penalises the encoder when D reconstructs the input well.

- D (`--adv_AE_type`, default res_normN4C64, Adam 1e-3) is pre-trained for `--gan_pretrain_epochs` on
  the defender's own training split before the first epoch (the paper code uses the test set).
- Each training batch: N steps of D on the clean, detached z (loss -SSIM, or MSE with
  `--gan_loss_type MSE`), then the encoder term with D in eval mode:
  strength * max(0, SSIM(D(z), x) - `--ssim_threshold`)  or  -strength * MSE(D(z), x).
D's weights and optimizer state are part of the checkpoint, so `--resume` continues exactly. The
defence steps its own optimizer inside `encoder_loss`, so the trainer must not capture that step
in a graph (`capturable = False`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from architectures.decoders import build_decoder, state_mismatch
from attacks.metrics import ssim_paper
from defenses.base import Defense
from defenses.registry import register_at
from utils import UserError


class AdversarialTraining(Defense):
    name = "gan_adv"
    capturable = False

    def __init__(self, strength: float, steps: int, feature_shape: Sequence[int], image_size: int,
                 mean: Sequence[float], std: Sequence[float], decoder: str = "res_normN4C64",
                 pretrain_epochs: int = 30, loss_type: str = "SSIM", ssim_threshold: float = 0.5,
                 lr: float = 1e-3, seed: int = 0, channels: Optional[int] = None):
        if loss_type not in ("SSIM", "MSE"):
            raise UserError(f"--gan_loss_type must be SSIM or MSE (got '{loss_type}')")
        self.strength, self.steps = float(strength), int(steps)
        self.pretrain_epochs, self.loss_type = int(pretrain_epochs), loss_type
        self.ssim_threshold, self.seed = float(ssim_threshold), int(seed)
        channels = len(mean) if channels is None else channels
        self.decoder = build_decoder(decoder, feature_shape, image_size, out_channels=channels)
        self.decoder.requires_grad_(False)  # only its own steps train it; the encoder loss must not
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pretrained = False
        self._ssim_sum = self._n = None  # running defender-decoder quality over an epoch (no sync per batch)

    # ------------------------------------------------------------------ pieces
    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The network input back in [0, 1], the decoder's target."""
        return (x.float() * self.std.to(x.device) + self.mean.to(x.device)).clamp(0.0, 1.0)

    def decoder_step(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One Adam step of D on detached features; returns D's batch SSIM (detached)."""
        self.decoder.train()
        self.decoder.requires_grad_(True)
        try:
            with torch.enable_grad():
                rec = self.decoder(z.detach())
                ssim = ssim_paper(rec, target).mean()
                loss = -ssim if self.loss_type == "SSIM" else F.mse_loss(rec, target)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)  # no stale gradients held between batches
        finally:
            self.decoder.requires_grad_(False)
        return ssim.detach()

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
        for _ in range(self.steps):
            ssim = self.decoder_step(z, target)
        if self._ssim_sum is None:
            self._ssim_sum, self._n = torch.zeros((), device=z.device), 0
        self._ssim_sum += ssim
        self._n += 1
        return self.penalty(z, target)

    def on_train_start(self, trainer) -> dict:
        """Pre-trains D on the defender's training split (once: a resumed run has it in its state)."""
        if self.pretrained or self.strength == 0:
            return {}
        from datasets import BatchLoader

        b = trainer.bundle
        loader = BatchLoader(b.train, trainer.s.batch_size, mean=b.mean, std=b.std, device=trainer.device,
                             shuffle=True, seed=self.seed + 7919, drop_last=len(b.train) > trainer.s.batch_size)
        encoder = trainer.model.encoder
        was_training = encoder.training
        encoder.eval()
        ssim = None
        bar = tqdm(range(self.pretrain_epochs), desc="gan_adv: pre-training the defender decoder",
                   disable=not trainer.progress, leave=False, unit="epoch")
        for epoch in bar:
            loader.set_epoch(epoch)
            total, n = torch.zeros((), device=trainer.device), 0
            for x, _ in loader:
                with torch.no_grad():
                    z = encoder(x).float()
                total += self.decoder_step(z, self.images(x))
                n += 1
            ssim = (total / max(n, 1)).item()
            bar.set_postfix(ssim=f"{ssim:.3f}")
        bar.close()
        encoder.train(was_training)
        self.pretrained = True
        return {} if ssim is None else {"adv_pretrain_ssim": ssim}

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


@register_at("gan_adv")
def _build(opts, ctx):
    if ctx.feature_shape is None or ctx.image_size is None or ctx.mean is None:
        raise UserError("gan_adv needs the model's feature shape and the data's image size and statistics")
    c = ctx.cfg
    return AdversarialTraining(
        opts.strength, opts.gan_adv_steps, ctx.feature_shape, ctx.image_size, ctx.mean, ctx.std,
        decoder=str(c.get("adv_AE_type") or "res_normN4C64"),
        pretrain_epochs=int(c.get("gan_pretrain_epochs", 30)), loss_type=str(c.get("gan_loss_type") or "SSIM"),
        ssim_threshold=float(c.get("ssim_threshold", 0.5)), seed=int(c.get("random_seed", 0)))
