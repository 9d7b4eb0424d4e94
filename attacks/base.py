"""What every attack shares: the frozen target, queries through the deployed obfuscation, scoring on
the eval images with the mean-image baseline, the grid, resumable training checkpoints.

An attack implements only how it reconstructs: `Attack.fit(ctx)` returns callables z~ -> images.
Attacks that train a reconstruction network per epoch (decoder, GAN) derive from `TrainedAttack`
and implement `build` and `train_epoch`; the epoch loop, held-out model selection and checkpoints
live here once.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from architectures.decoders import state_mismatch
from attacks.metrics import concat_metrics, metrics_in_batches, per_image_metrics, summarize
from utils import UserError, load_checkpoint, normalize, torch_save_atomic

GRID_SIZE = 16


@dataclass
class AttackResult:
    """Scores on the eval images plus a few reconstructions.

    `final` / `best_heldout`: `metrics.summarize` dicts on the eval set for the reconstructor after the
    last epoch and for the one with the lowest held-out MSE (`best_epoch`, 1-based). `final` is the
    headline number; `best_heldout` is labelled as such because the attacker picked it on its own
    held-out data, never on the eval images. Attacks without training report `final` twice.
    """
    final: dict
    best_heldout: dict
    best_epoch: int
    n_fit: int
    n_heldout: int
    n_eval: int
    wall_time_s: float
    grid_originals: torch.Tensor          # (<=16, 3, S, S) in [0,1], CPU
    grid_recons: torch.Tensor             # same images reconstructed by the final reconstructor
    name: str = ""                        # e.g. the decoder name
    epochs: int = 0
    per_image_final: dict = field(default_factory=dict)   # metric -> (n_eval,) CPU tensor
    per_image_best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)           # per epoch: {"epoch", "loss", "heldout_mse", "lr", ...}
    model: Optional[Any] = None           # the final reconstruction network (e.g. to initialise a GAN generator)
    # Scores of a constant guess, the attacker's mean image: an attack is only informative above this.
    baseline_mean_image: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)          # the attack's own hyper-parameters

    def summary(self) -> dict:
        """JSON-ready part for metrics.json (the caller adds the grid's path)."""
        return {"final": self.final, "best_heldout": self.best_heldout, "best_epoch": self.best_epoch,
                "n_fit": self.n_fit, "n_heldout": self.n_heldout, "n_eval": self.n_eval,
                "decoder": self.name, "epochs": self.epochs, "wall_time_s": round(self.wall_time_s, 3),
                "baseline_mean_image": self.baseline_mean_image,
                **({"settings": self.settings} if self.settings else {})}


@dataclass
class Context:
    """One attack's view of the target: frozen encoder, the deployed obfuscation, uint8 images on device."""
    encoder: nn.Module
    obfuscate: Callable[[torch.Tensor], torch.Tensor]
    feature_shape: tuple
    mean: Sequence[float]
    std: Sequence[float]
    x_fit: torch.Tensor
    x_held: Optional[torch.Tensor]
    x_eval: torch.Tensor
    device: torch.device

    @property
    def image_size(self) -> int:
        return int(self.x_eval.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.x_eval.shape[1])


@dataclass
class Fitted:
    """What an attack's `fit` hands back: reconstructors z~ -> [0,1] images, and how they came about."""
    final: Callable[[torch.Tensor], torch.Tensor]
    best: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    best_epoch: int = 0
    history: list = field(default_factory=list)
    model: Optional[nn.Module] = None


def to_unit(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().div(255.0)


def averaged(obfuscate: Callable[[torch.Tensor], torch.Tensor], sends: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the repeated-query attacker observes (`--attack_queries K`): the mean of K independent sends of
    the same features, each with the defence's fresh randomness."""
    if sends == 1:
        return obfuscate

    def mean_of_sends(z: torch.Tensor) -> torch.Tensor:
        total = obfuscate(z)
        for _ in range(sends - 1):
            total = total + obfuscate(z)
        return total / sends
    return mean_of_sends


class Attack:
    """Template: `run` freezes the target, calls `fit`, scores. Subclasses implement `fit`."""

    name = "attack"

    def __init__(self, batch_size: int = 256, seed: int = 0, device=None, progress: bool = True,
                 feature_cache_mb: float = 2048, log: Callable[[str], None] = print,
                 eval_limit: Optional[int] = None, queries: int = 1):
        if batch_size < 1:
            raise UserError(f"attack batch size must be >= 1 (got {batch_size})")
        if queries < 1:
            raise UserError(f"--attack_queries must be >= 1 (got {queries})")
        # The attacker sees the mean of this many sends of each image, in training and when scored.
        self.queries = int(queries)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.device = torch.device(device) if device is not None else None
        self.progress, self.feature_cache_mb, self.log = progress, feature_cache_mb, log
        self._z_fit = None
        # Score only the first N eval images (they are ordered round-robin over classes); for attacks
        # whose cost grows with the eval set, like rMLE. The mean-image baseline uses the same images.
        self.eval_limit = int(eval_limit) if eval_limit else None

    # --- to implement ------------------------------------------------------------------------------
    def fit(self, ctx: Context) -> Fitted:
        raise NotImplementedError

    def label(self) -> str:
        return self.name

    def epochs_done(self) -> int:
        return 0

    def settings(self) -> dict:
        return {}

    # --- queries to the device side -------------------------------------------------------------
    def encode(self, ctx: Context, x_u8: torch.Tensor) -> torch.Tensor:
        """Clean features of uint8 images, in chunks; the encoder is frozen and in eval mode."""
        enc_dev = next((p.device for p in ctx.encoder.parameters()), ctx.device)
        out = []
        with torch.no_grad():
            for s in range(0, x_u8.shape[0], self.batch_size):
                xb = normalize(to_unit(x_u8[s:s + self.batch_size].to(enc_dev)), ctx.mean, ctx.std)
                out.append(ctx.encoder(xb).to(ctx.device))
        return torch.cat(out)

    def query(self, ctx: Context, x_u8: torch.Tensor) -> torch.Tensor:
        """What the server receives for these images: obfuscated features (fresh randomness)."""
        with torch.no_grad():
            return ctx.obfuscate(self.encode(ctx, x_u8))

    def fit_features(self, ctx: Context, idx: torch.Tensor) -> torch.Tensor:
        """Clean features of the attacker's images `idx`.

        The eval-mode encoder is deterministic, so clean features are computed once when they fit in
        `feature_cache_mb` and the (possibly random) obfuscation is applied fresh to every query
        batch: exactly what per-query encoding gives, at a fraction of the cost.
        """
        if self._z_fit is None and len(ctx.x_fit) * math.prod(ctx.feature_shape) * 4 <= self.feature_cache_mb * 2**20:
            self._z_fit = self.encode(ctx, ctx.x_fit)
        return self._z_fit[idx] if self._z_fit is not None else self.encode(ctx, ctx.x_fit[idx])

    # --- the template ------------------------------------------------------------------------------
    def run(self, split_model, obfuscate: Callable[[torch.Tensor], torch.Tensor], fit, heldout, evals,
            mean: Sequence[float], std: Sequence[float]) -> AttackResult:
        t0 = time.time()
        encoder = split_model.encoder
        if self.device is None:
            self.device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
        if len(fit) == 0 or len(evals) == 0:
            raise UserError(f"{self.name} attack needs attacker and eval images (got {len(fit)} and {len(evals)}); "
                            "use more data (--limit_train / --limit_test) or another attack mode")
        torch.manual_seed(self.seed)  # init and the defence's query noise become reproducible
        dev = self.device
        if self.eval_limit is not None:
            evals = type(evals)(x=evals.x[:self.eval_limit], y=evals.y[:self.eval_limit])
        ctx = Context(encoder=encoder, obfuscate=averaged(obfuscate, self.queries),
                      feature_shape=tuple(split_model.feature_shape), mean=mean, std=std, x_fit=fit.x.to(dev),
                      x_held=heldout.x.to(dev) if len(heldout) else None, x_eval=evals.x.to(dev), device=dev)
        was_training = encoder.training
        grad_flags = [p.requires_grad for p in encoder.parameters()]
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        try:
            fitted = self.fit(ctx)
            # One obfuscated query of the eval images, shared by both reconstructors (like for like).
            z_eval = self.query(ctx, ctx.x_eval)
            per_final, grid = self.score(fitted.final, z_eval, ctx.x_eval)
            per_best = self.score(fitted.best, z_eval, ctx.x_eval)[0] if fitted.best is not None else per_final
        finally:
            # The caller's model goes back exactly as it came (the defence may keep training it).
            for p, f in zip(encoder.parameters(), grad_flags):
                p.requires_grad_(f)
            encoder.train(was_training)
            self._z_fit = None
        mean_image = to_unit(ctx.x_fit).mean(0, keepdim=True)
        baseline = metrics_in_batches(mean_image.expand_as(ctx.x_eval), to_unit(ctx.x_eval))
        return AttackResult(
            final=summarize(per_final, self.batch_size), baseline_mean_image=summarize(baseline, self.batch_size),
            best_heldout=summarize(per_best, self.batch_size),
            best_epoch=int(fitted.best_epoch if fitted.best is not None else self.epochs_done()),
            n_fit=len(fit), n_heldout=len(heldout), n_eval=len(evals), wall_time_s=time.time() - t0,
            grid_originals=to_unit(ctx.x_eval[:GRID_SIZE]).cpu(), grid_recons=grid, name=self.label(),
            epochs=self.epochs_done(), per_image_final=per_final, per_image_best=per_best, history=fitted.history,
            model=fitted.model,
            settings={**self.settings(), **({"queries": self.queries} if self.queries > 1 else {})})

    def score(self, reconstruct, z: torch.Tensor, x_u8: torch.Tensor):
        """Per-image metrics of reconstruct(z) against the images, in batches; also the grid's images."""
        chunks, grid = [], []
        for s in range(0, z.shape[0], self.batch_size):
            rec = reconstruct(z[s:s + self.batch_size]).detach()
            chunks.append(per_image_metrics(rec, to_unit(x_u8[s:s + self.batch_size])))
            if sum(g.shape[0] for g in grid) < GRID_SIZE:
                grid.append(rec[:GRID_SIZE].float().cpu())
        return concat_metrics(chunks), torch.cat(grid)[:GRID_SIZE]


def network_reconstructor(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def reconstruct(z):
        model.eval()
        with torch.no_grad():
            return model(z)
    return reconstruct


class TrainedAttack(Attack):
    """An attack that trains a reconstruction network `self.model` on the attacker's images, epoch by
    epoch, keeps the best epoch on its held-out images and checkpoints every `checkpoint_every` epochs
    to `checkpoint_path` (resumed when present and made with the same settings)."""

    def __init__(self, epochs: int, checkpoint_path=None, checkpoint_every: int = 5, heldout_bn: str = "eval",
                 **kw):
        super().__init__(**kw)
        if epochs < 1:
            raise UserError(f"{self.name} attack needs epochs >= 1 (got {epochs})")
        if heldout_bn not in ("eval", "train"):
            raise UserError(f"--decoder_heldout_bn must be eval or train (got '{heldout_bn}')")
        # "train": the published per-epoch held-out pass, which leaves the decoder in train mode, so
        # BatchNorm normalises with batch statistics and the held-out images move its running ones.
        self.heldout_bn = heldout_bn
        self.epochs = int(epochs)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.model: Optional[nn.Module] = None
        self.done = 0

    def build(self, ctx: Context) -> None:
        """Create self.model and its optimisers."""
        raise NotImplementedError

    def train_epoch(self, ctx: Context, epoch: int, gen: torch.Generator) -> dict:
        """One pass over the attacker's images; returns scalar tensors to log ("loss" at least)."""
        raise NotImplementedError

    def training_state(self) -> dict:
        """Everything besides self.model needed to continue training (optimisers, schedulers)."""
        return {}

    def load_training_state(self, state: dict) -> None:
        pass

    def checkpoint_mismatch(self, ck: dict) -> Optional[str]:
        """Why checkpoint `ck` cannot load into the networks built now (None when it can); attacks that
        train more networks than self.model add theirs."""
        return state_mismatch(self.model, ck["model"])

    def epochs_done(self) -> int:
        return self.done

    def batches(self, ctx: Context, gen: torch.Generator, min_batch: int = 2):
        """Shuffled index batches over the attacker's images; a trailing batch smaller than
        `min_batch` is dropped (BatchNorm cannot train on one sample; it is reshuffled next epoch)."""
        n = ctx.x_fit.shape[0]
        perm = torch.randperm(n, generator=gen).to(ctx.device)
        for s in range(0, n, self.batch_size):
            idx = perm[s:s + self.batch_size]
            if idx.numel() < min_batch and s > 0:
                break
            yield idx

    def heldout_mse(self, ctx: Context, z_clean: torch.Tensor) -> torch.Tensor:
        z = ctx.obfuscate(z_clean)
        rec = network_reconstructor(self.model) if self.heldout_bn == "eval" else self.model.train()
        total = torch.zeros((), device=ctx.device)
        for s in range(0, z.shape[0], self.batch_size):
            diff = rec(z[s:s + self.batch_size]) - to_unit(ctx.x_held[s:s + self.batch_size])
            total += diff.pow(2).flatten(1).mean(1).sum()
        return total / z.shape[0]

    def fit(self, ctx: Context) -> Fitted:
        self.build(ctx)
        self.done = 0
        gen = torch.Generator().manual_seed(self.seed)
        best_state, best_mse, best_epoch, history = None, math.inf, self.epochs, []
        start = self._resume(gen)
        if start is not None:
            best_state, best_mse, best_epoch, history = start
        z_held = self.encode(ctx, ctx.x_held) if ctx.x_held is not None else None
        bar = tqdm(range(self.done + 1, self.epochs + 1), desc=f"{self.name} attack {self.label()}",
                   disable=not self.progress, leave=False)
        for epoch in bar:
            t_epoch = time.perf_counter()
            self.model.train()
            logs = self.train_epoch(ctx, epoch, gen)
            with torch.no_grad():
                held = self.heldout_mse(ctx, z_held) if z_held is not None else torch.tensor(math.nan)
            names = list(logs)
            values = torch.stack([logs[k].float().to(ctx.device) for k in names] + [held.to(ctx.device)]).tolist()
            row = {"epoch": epoch, **dict(zip(names, values[:-1])), "heldout_mse": values[-1]}  # one sync per epoch
            row["time_s"] = time.perf_counter() - t_epoch  # measured after that sync: the epoch's real time
            if values[-1] < best_mse:
                best_mse, best_epoch = values[-1], epoch
                best_state = copy.deepcopy(self.model.state_dict())
            history.append(row)
            self.done = epoch
            bar.set_postfix(loss=f"{row['loss']:.4f}", heldout=f"{row['heldout_mse']:.4f}")
            if self.checkpoint_path and (epoch % self.checkpoint_every == 0) and epoch < self.epochs:
                torch_save_atomic({"settings": self.settings(), "epoch": epoch, "model": self.model.state_dict(),
                                   "training": self.training_state(), "best": (best_state, best_mse, best_epoch),
                                   "history": history, "gen": gen.get_state(), "rng": torch.get_rng_state()},
                                  self.checkpoint_path)
        bar.close()
        best = None
        if best_state is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(best_state)
            best = network_reconstructor(best_model)
        return Fitted(final=network_reconstructor(self.model), best=best, best_epoch=best_epoch, history=history,
                      model=self.model.eval())

    def _resume(self, gen: torch.Generator):
        path = self.checkpoint_path
        if not path or not path.exists():
            return None
        fix = "delete it to start this attack over"
        ck = load_checkpoint(path, self.device, fix=fix)
        if not isinstance(ck, dict):
            raise UserError(f"{path} holds a {type(ck).__name__}, not an attack checkpoint; {fix}")
        if ck.get("settings") != self.settings():
            self.log(f"note: attack checkpoint {path} was made with other settings; starting over")
            return None
        try:  # settings match, so anything missing or misshapen means the file was altered
            why = self.checkpoint_mismatch(ck)
            if why:  # same settings, other network design (made before a decoder or critic changed)
                self.log(f"note: attack checkpoint {path} holds networks of another design ({why}); starting over")
                return None
            self.model.load_state_dict(ck["model"])
            self.load_training_state(ck["training"])
            gen.set_state(ck["gen"].cpu())  # map_location moved them; generator states live on the CPU
            torch.set_rng_state(ck["rng"].cpu())
            self.done = int(ck["epoch"])
            best_state, best_mse, best_epoch = ck["best"]
            history = list(ck["history"])
        except Exception as e:
            raise UserError(f"attack checkpoint {path} does not fit this attack ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}); {fix}") from None
        self.log(f"resumed {self.name} attack from {path} after epoch {self.done}")
        return best_state, best_mse, best_epoch, history
