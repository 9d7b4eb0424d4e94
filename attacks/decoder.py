"""Training-based model inversion: fit a decoder from obfuscated features back to images.

The attacker has black-box query access to the deployed device side: it sends its own images
through the frozen encoder and the deployed obfuscation (the same callable the defence uses, with
fresh randomness every query) and learns a decoder z~ -> x with an MSE loss on [0,1] images.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from architectures.decoders import build_decoder
from attacks.base import AttackResult
from attacks.metrics import concat_metrics, metrics_in_batches, per_image_metrics, summarize
from capture import StepCapture, capture_enabled
from utils import UserError, normalize

ATTACK_MODES = ("train_time", "infer_time")
HELDOUT_FRACTION = 0.1
EVAL_FRACTION = 0.1  # infer_time: share of each test class kept for scoring
GRID_SIZE = 16


def _make_split(like, x: torch.Tensor, y: torch.Tensor):
    # The split type comes from the caller's bundle, so attacks/ needs no import of datasets/.
    return type(like)(x=x, y=y)


def _take(split, idx: torch.Tensor):
    return _make_split(split, split.x[idx], split.y[idx])


def _holdout(split, seed: int):
    """Seeded random 90/10 split of the attacker's own data: (fit, heldout)."""
    n = len(split)
    n_held = int(math.floor(HELDOUT_FRACTION * n + 0.5)) if n >= 2 else 0
    n_held = max(1, n_held) if n >= 2 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return _take(split, perm[n_held:].sort().values), _take(split, perm[:n_held].sort().values)


def _round_robin(y: torch.Tensor) -> torch.Tensor:
    """Order indices class by class in turn (c0, c1, ..., c0, c1, ...) so the first images, the ones
    shown in the reconstruction grid, span the classes instead of showing only the first class."""
    rank = torch.zeros_like(y)
    for c in torch.unique(y).tolist():
        members = y == c
        rank[members] = torch.arange(int(members.sum()))
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


def attacker_splits(bundle, mode: str, seed: int):
    """(fit, heldout, evals) TensorSplits for the attack `mode`.

    train_time: the attacker holds the defender's training images (bundle.train); 10% of them
      (seeded) are held out to pick the best decoder; scoring is on all of bundle.test (reordered
      round-robin over classes, like infer_time's eval images).
    infer_time: the test set is shuffled within each class (seeded); per class the first 90% go to
      the attacker (10% of those held out), the last 10% are scored. Every class with >= 2 images
      gives at least one eval image. Eval images are ordered round-robin over classes so the first
      few (the picture grid) span the classes.
    """
    if mode not in ATTACK_MODES:
        raise UserError(f"unknown attack mode '{mode}'; choose one of {', '.join(ATTACK_MODES)}")
    if mode == "train_time":
        fit, heldout = _holdout(bundle.train, seed)
        return fit, heldout, _take(bundle.test, _round_robin(bundle.test.y.cpu()))

    test = bundle.test
    y = test.y.cpu()
    g = torch.Generator().manual_seed(seed)
    attacker_idx, eval_idx, eval_key = [], [], []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        n_c = members.numel()
        n_eval = max(1, int(math.floor(EVAL_FRACTION * n_c + 0.5))) if n_c >= 2 else 0
        attacker_idx.append(members[: n_c - n_eval])
        ev = members[n_c - n_eval:]
        eval_idx.append(ev)
        # Sort key (rank within class, class) interleaves classes in the eval order.
        eval_key.append(torch.arange(ev.numel()) * (int(y.max()) + 1) + c)
    att = torch.cat(attacker_idx).sort().values
    ev, key = torch.cat(eval_idx), torch.cat(eval_key)
    ev = ev[torch.argsort(key)]
    fit, heldout = _holdout(_take(test, att), seed + 1)
    return fit, heldout, _take(test, ev)


class DecoderAttack:
    """Decoder (training-based) inversion attack; see module docstring and DESIGN §8."""

    def __init__(self, gan_AE_type: str = "res_normN8C64", epochs: int = 50, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0, device=None,
                 progress: bool = True, min_lr: float = 1e-5, feature_cache_mb: float = 2048,
                 capture: str = "auto", bf16: bool = False):
        if epochs < 1 or batch_size < 1:
            raise UserError(f"decoder attack needs epochs >= 1 and batch_size >= 1 "
                            f"(got {epochs}, {batch_size}); fix --attack_epochs / batch size")
        self.gan_AE_type = gan_AE_type
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lr, self.weight_decay, self.min_lr = float(lr), float(weight_decay), float(min_lr)
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.progress = progress
        self.feature_cache_mb = feature_cache_mb
        self.capture, self.bf16 = capture, bool(bf16)

    # --- queries to the device side -------------------------------------------------------------
    def _encode(self, encoder: nn.Module, x_u8: torch.Tensor, mean, std) -> torch.Tensor:
        """Clean features of uint8 images, in chunks; encoder is frozen and in eval mode."""
        enc_dev = next((p.device for p in encoder.parameters()), self.device)
        out = []
        with torch.no_grad():
            for s in range(0, x_u8.shape[0], self.batch_size):
                xb = normalize(x_u8[s:s + self.batch_size].to(enc_dev).float().div_(255.0), mean, std)
                out.append(encoder(xb).to(self.device))
        return torch.cat(out)

    def run(self, split_model, obfuscate: Callable[[torch.Tensor], torch.Tensor], fit, heldout, evals,
            mean: Sequence[float], std: Sequence[float]) -> AttackResult:
        t0 = time.time()
        encoder = split_model.encoder
        if self.device is None:
            self.device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
        dev = self.device
        if len(fit) == 0 or len(evals) == 0:
            raise UserError(f"decoder attack needs attacker and eval images (got {len(fit)} and {len(evals)}); "
                            "use more data (--limit_train / --limit_test) or another attack mode")
        torch.manual_seed(self.seed)  # decoder init and the defence's query noise become reproducible

        was_training = encoder.training
        grad_flags = [p.requires_grad for p in encoder.parameters()]
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        try:
            return self._run(encoder, split_model, obfuscate, fit, heldout, evals, mean, std, dev, t0)
        finally:
            # The caller's model goes back exactly as it came (the defence may keep training it).
            for p, f in zip(encoder.parameters(), grad_flags):
                p.requires_grad_(f)
            encoder.train(was_training)

    def _run(self, encoder, split_model, obfuscate, fit, heldout, evals, mean, std, dev, t0) -> AttackResult:
        x_fit = fit.x.to(dev)  # uint8 stays uint8 on the device: 4x less memory than float
        x_held = heldout.x.to(dev) if len(heldout) else None
        x_eval = evals.x.to(dev)
        image_size = int(x_fit.shape[-1])
        feature_shape = tuple(split_model.feature_shape)

        # The eval-mode encoder is deterministic, so clean features can be computed once and the
        # (possibly random) obfuscation applied fresh to every query batch: the decoder sees
        # exactly what per-query encoding would give, at a fraction of the cost.
        cache_bytes = len(fit) * math.prod(feature_shape) * 4
        z_fit = self._encode(encoder, x_fit, mean, std) if cache_bytes <= self.feature_cache_mb * 2**20 else None

        z_held_clean = self._encode(encoder, x_held, mean, std) if x_held is not None else None

        def features(idx: torch.Tensor) -> torch.Tensor:
            if z_fit is not None:
                return z_fit[idx]
            return self._encode(encoder, x_fit[idx], mean, std)

        decoder = build_decoder(self.gan_AE_type, feature_shape, image_size, out_channels=x_fit.shape[1]).to(dev)
        captured = capture_enabled(self.capture, dev)
        # capturable: Adam's step counter lives on the device, so a replayed graph can advance it.
        opt = torch.optim.Adam(decoder.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                               **({"capturable": True} if captured else {}))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs, eta_min=self.min_lr)
        gen = torch.Generator().manual_seed(self.seed)
        mse = nn.MSELoss()
        loss_sum = torch.zeros((), device=dev)
        use_bf16 = self.bf16 and dev.type == "cuda"

        def step(z: torch.Tensor, target_u8: torch.Tensor) -> None:
            with (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not captured) if use_bf16
                  else contextlib.nullcontext()):
                rec = decoder(z)
            loss = mse(rec.float(), target_u8.float().div_(255.0))  # the loss stays fp32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum.add_(loss.detach() * target_u8.shape[0])

        stepper = StepCapture(step, captured)
        n = x_fit.shape[0]
        best_state, best_mse, best_epoch, history = None, math.inf, self.epochs, []
        bar = tqdm(range(1, self.epochs + 1), desc=f"decoder attack {self.gan_AE_type}",
                   disable=not self.progress, leave=False)
        for epoch in bar:
            decoder.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            loss_sum.zero_()
            seen = 0
            key = opt.param_groups[0]["lr"]  # baked into a captured step; changes once per epoch
            for s in range(0, n, self.batch_size):
                idx = perm[s:s + self.batch_size]
                if idx.numel() < 2 and seen > 0:
                    break  # BatchNorm cannot train on a single sample; it is reshuffled next epoch
                with torch.no_grad():
                    z = obfuscate(features(idx))
                stepper(key, z, x_fit[idx])
                seen += idx.numel()
            lr_now = opt.param_groups[0]["lr"]
            sched.step()

            if x_held is not None:
                with torch.no_grad():
                    z_held = obfuscate(z_held_clean)
                held_mse = self._mean_mse(decoder, z_held, x_held)
                loss_val, held_val = torch.stack([loss_sum / seen, held_mse]).tolist()  # one sync per epoch
                if held_val < best_mse:
                    best_mse, best_epoch = held_val, epoch
                    best_state = copy.deepcopy(decoder.state_dict())
            else:
                loss_val, held_val = (loss_sum / seen).item(), math.nan
            history.append({"epoch": epoch, "loss": loss_val, "heldout_mse": held_val, "lr": lr_now})
            bar.set_postfix(loss=f"{loss_val:.4f}", heldout=f"{held_val:.4f}")
        bar.close()

        # One obfuscated query of the eval images, shared by both decoders for a like-for-like score.
        z_eval = self._obf_features(encoder, obfuscate, x_eval, mean, std)
        per_final, grid_recons = self._score(decoder, z_eval, x_eval)
        if best_state is not None:
            best_decoder = copy.deepcopy(decoder)
            best_decoder.load_state_dict(best_state)
            per_best, _ = self._score(best_decoder, z_eval, x_eval)
        else:
            per_best, best_epoch = per_final, self.epochs

        mean_image = x_fit.float().mean(0, keepdim=True).div_(255.0)
        baseline = metrics_in_batches(mean_image.expand_as(x_eval), x_eval.float().div(255.0))
        return AttackResult(
            final=summarize(per_final), baseline_mean_image=summarize(baseline),
            best_heldout=summarize(per_best), best_epoch=int(best_epoch),
            n_fit=len(fit), n_heldout=len(heldout), n_eval=len(evals), wall_time_s=time.time() - t0,
            grid_originals=x_eval[:GRID_SIZE].float().div(255.0).cpu(), grid_recons=grid_recons,
            name=self.gan_AE_type, epochs=self.epochs, per_image_final=per_final, per_image_best=per_best,
            history=history, model=decoder.eval())

    # --- evaluation helpers -----------------------------------------------------------------------
    def _obf_features(self, encoder, obfuscate, x_u8, mean, std) -> torch.Tensor:
        with torch.no_grad():
            return obfuscate(self._encode(encoder, x_u8, mean, std))

    @torch.no_grad()
    def _mean_mse(self, decoder, z, x_u8) -> torch.Tensor:
        decoder.eval()
        total = torch.zeros((), device=z.device)
        for s in range(0, z.shape[0], self.batch_size):
            rec = decoder(z[s:s + self.batch_size])
            total += (rec - x_u8[s:s + self.batch_size].float().div(255.0)).pow(2).flatten(1).mean(1).sum()
        return total / z.shape[0]

    @torch.no_grad()
    def _score(self, decoder, z, x_u8):
        decoder.eval()
        chunks, grid = [], None
        for s in range(0, z.shape[0], self.batch_size):
            rec = decoder(z[s:s + self.batch_size])
            chunks.append(per_image_metrics(rec, x_u8[s:s + self.batch_size].float().div(255.0)))
            if grid is None:
                grid = rec[:GRID_SIZE].float().cpu()
        if grid.shape[0] < min(GRID_SIZE, z.shape[0]):  # batch_size < 16: gather the rest
            grid = decoder(z[:GRID_SIZE]).float().cpu()
        return concat_metrics(chunks), grid
