"""The training engine (DESIGN.md §7): one trainer, one epoch loop, atomic checkpoints, exact resume."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from accel.capture import StepCapture, capture_enabled, params_signature
from accel.eval_fold import EvalFolder
from architectures import architecture_record, load_split_state
from datasets import BatchLoader
from utils import (  # noqa: F401 (the schedule, long imported from here)
    RunFailed,
    UserError,
    append_csv_row,
    best_resets,
    load_checkpoint,
    milestones,
    scheduled_lr,
    torch_save_atomic,
    truncate_csv,
)

LOG_FIELDS = ["epoch", "lr", "lambda_eff", "train_loss", "train_acc", "cem_loss", "val_acc", "cem_mean_var",
              "cem_logdet", "epoch_time_s"]


@dataclass
class TrainSettings:
    num_epochs: int = 240
    learning_rate: float = 0.05
    local_lr: Optional[float] = None  # encoder lr; None -> same as the server's
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: bool = True
    seed: int = 0
    milestones: str = "paper"
    bf16: bool = False
    channels_last: bool = True  # faster convs on CPU (mkldnn) and CUDA alike
    capture: str = "auto"  # whole-step CUDA graphs: auto = on for CUDA, off on CPU/MPS (accel/capture.py)
    # Seconds of training between checkpoints (last.pt, best.pt); the last epoch is always written.
    # None: every epoch on CPU/MPS, 30 s on CUDA, where an epoch takes about a second and writing the
    # checkpoints (~120 MB for vgg11 with its optimizer, synced to disk) a tenth of that.
    checkpoint_seconds: Optional[float] = None
    select_on: str = "val"  # "test" also restarts the best-epoch tracker as the paper code does


def no_grad_batch_size(device, image_size: int) -> int:
    """Batch of the no-grad passes (CEM's refresh, validation, test). 512 on CPU and MPS. On CUDA these
    passes look bound by per-batch overhead, not by their arithmetic (on an H100 the refresh took 0.12 s
    in fp32 and 0.14 s in bf16, which halves its traffic but adds casts), so fewer, larger batches:
    2048 images at 32 px (about 0.5 GB of first-block activations for vgg11), the same pixel count at
    larger sizes. Eval-mode outputs do not depend on the batch; only float rounding can differ."""
    if torch.device(device).type != "cuda":
        return 512
    return max(512, 2048 * 32 * 32 // (int(image_size) ** 2))


class Trainer:
    """Trains a SplitModel under a DefenseStack; everything about one run's training lives here."""

    def __init__(self, model, bundle, defenses, device, run_dir, settings: TrainSettings,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.model, self.bundle, self.defenses = model.to(device), bundle, defenses.to(device)
        self.device, self.run_dir, self.s = device, Path(run_dir), settings
        self.progress, self.log = progress, log
        self.ckpt_dir = self.run_dir / "checkpoints"
        if settings.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Called after the model's structure changed (pruning): anything holding its parameters or
        # a traced/captured graph of it (e.g. a compiled step) registers its rebuild here.
        self.structure_hooks: list = []
        # Names of parameters left out of the optimizer: PATROL's `--patrol_optimizer published` keeps
        # training only what survived pruning, as the published code's stale optimizer did.
        self.frozen: set = set()
        self.opt = self._make_optimizer()
        stats = dict(mean=bundle.mean, std=bundle.std, device=device)
        n_train = len(bundle.train)
        self.train_loader = BatchLoader(bundle.train, settings.batch_size, shuffle=True, augment=True,
                                        dataset=bundle.name, seed=settings.seed,
                                        drop_last=n_train > settings.batch_size, **stats)
        nb = no_grad_batch_size(device, bundle.train.x.shape[-1])
        self.plain_train_loader = BatchLoader(bundle.train, nb, **stats)
        # The paper fits CEM's mixture on augmented training batches; its own seeded stream per epoch
        # keeps the refresh deterministic (exact resume) without touching the training batches' draws,
        # and drawing in blocks of 512 keeps those draws the same whatever batch the device uses.
        self.aug_train_loader = BatchLoader(bundle.train, nb, augment=True, dataset=bundle.name,
                                            seed=settings.seed, stream="feature_pass", draw_block=512, **stats)
        select = bundle.val if bundle.val is not None else bundle.test
        self.select_loader = BatchLoader(select, nb, **stats)
        self.test_loader = BatchLoader(bundle.test, nb, **stats)
        milestones(settings.num_epochs, settings.milestones)  # a bad spec fails before any work
        self.epoch = 0  # epochs completed
        self.best = {"acc": -1.0, "epoch": 0}
        self.outputs_finite = True  # set by every evaluate(): the divergence check reads the last one
        self.elapsed = 0.0
        captured = capture_enabled(settings.capture, device) and defenses.capturable
        if captured:
            torch.backends.cudnn.benchmark = True  # shapes are static under capture
        self.defenses.set_capture(captured)
        self.stepper = StepCapture(self._step, captured, log=log)
        self._eval_encoder = EvalFolder()  # BatchNorm folded into the convs for the no-grad passes
        # Running sums of one epoch (loss, correct, CEM term, other defences' encoder terms); fixed
        # tensors so a graph can update them.
        self._sums = torch.zeros(4, device=device)
        self._step_lr = settings.learning_rate
        every = settings.checkpoint_seconds
        if every is not None and not (math.isfinite(every) and every >= 0):
            raise UserError(f"--checkpoint_seconds must be a number of seconds >= 0, got {every}")
        self.checkpoint_seconds = (30.0 if device.type == "cuda" else 0.0) if every is None else float(every)
        self._saved_at, self._saved_epoch = time.perf_counter(), 0
        self._best_pending = None  # the best epoch's weights, kept until the next checkpoint writes them

    # ------------------------------------------------------------------ helpers
    def _make_optimizer(self) -> torch.optim.Optimizer:
        s, model = self.s, self.model
        enc_lr = s.local_lr if s.local_lr else s.learning_rate

        def trained(*parts):
            out = []
            for part in parts:
                for name, p in getattr(model, part).named_parameters(prefix=part):
                    if name in self.frozen:
                        p.requires_grad_(False)  # its gradient would never be used (nor zeroed)
                    else:
                        out.append(p)
            return out

        # One SGD, two groups: same update as the paper's separate client/server optimisers.
        return torch.optim.SGD(
            [{"params": trained("encoder"), "base_lr": enc_lr, "lr": enc_lr},
             {"params": trained("server", "classifier"), "base_lr": s.learning_rate, "lr": s.learning_rate}],
            lr=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay,
            **({"fused": True} if self.device.type == "cuda" else {}))  # one kernel for the whole update

    def structure_changed(self, why: str = "", optimizer: str = "rebuild") -> None:
        """The model's tensors were replaced (e.g. channels pruned): rebuild what refers to them.

        optimizer "rebuild": the optimizer starts afresh over the current tensors (momentum buffers
        of the old shapes cannot carry over). "published": as the published PATROL code, whose
        optimizer still held the replaced tensors: the replaced ones stop training, the others keep
        their momentum. The best-epoch tracker restarts either way, since earlier epochs scored a
        different model than the one deployed now.
        """
        if optimizer not in ("rebuild", "published"):
            raise ValueError(f"optimizer must be 'rebuild' or 'published', got {optimizer!r}")
        old = self.opt
        if optimizer == "published":
            held = {id(p) for g in old.param_groups for p in g["params"]}
            self.frozen |= {n for n, p in self.model.named_parameters() if id(p) not in held}
        if self.s.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = self._make_optimizer()
        if optimizer == "published":
            for p in (p for g in self.opt.param_groups for p in g["params"]):
                if p in old.state:
                    self.opt.state[p] = old.state[p]
        self.best = {"acc": -1.0, "epoch": 0}
        self.stepper.reset()  # its key sees new parameters anyway; drop the stale graphs' memory now
        for hook in self.structure_hooks:
            hook()
        if why:
            self.log(why)

    def _autocast(self, cache: bool = True):
        if self.s.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    def _prep(self, x):
        if self.s.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def server_lr(self, epoch: int) -> float:
        return scheduled_lr(self.s.learning_rate, epoch, self.s.num_epochs, self.s.milestones)

    @torch.no_grad()
    def evaluate(self, loader: BatchLoader) -> float:
        """Accuracy in percent as deployed: the obfuscation (noise) stays on."""
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        finite = torch.ones((), device=self.device, dtype=torch.bool)
        n = 0
        encoder = self._eval_encoder.prepare(self.model.encoder)
        for x, y in loader:
            with self._autocast():
                z = encoder(self._prep(x))
                out = self.model.server_forward(self.defenses.obfuscate(z, training=False))
            correct += (out.argmax(1) == y).sum()
            finite &= torch.isfinite(out).all()
            n += len(y)
        hits, ok = torch.stack([correct, finite.long()]).tolist()  # one sync
        self.outputs_finite = bool(ok)  # argmax of NaN logits still counts as an answer
        return 100.0 * hits / max(n, 1)

    @torch.no_grad()
    def train_features(self, augment: bool = False):
        """Clean features (eval mode, no obfuscation) of one pass over the training set, for stateful
        defences; `augment` applies the training augmentation, drawn for the current epoch."""
        self.model.eval()
        loader = self.aug_train_loader if augment else self.plain_train_loader
        loader.set_epoch(self.epoch)
        encoder = self._eval_encoder.prepare(self.model.encoder)
        zs, ys = [], []
        for x, y in loader:
            with self._autocast():
                zs.append(encoder(self._prep(x)).float().flatten(1))
            ys.append(y)
        return torch.cat(zs), torch.cat(ys)

    # ------------------------------------------------------------------ one epoch
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One SGD step; results go into self._sums so a captured graph can replay it as is."""
        with self._autocast(cache=not self.stepper.enabled):  # graphs need autocast's cache off
            z = self.model.encoder(self._prep(x))
            out = self.model.server_forward(self.defenses.obfuscate(z, training=True))
            loss = F.cross_entropy(out.float(), y)
        terms = self.defenses.encoder_losses(z.float(), x, y, lr=self._step_lr)
        total = sum(terms.values(), loss)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        n = y.shape[0]
        self._sums[0] += loss.detach() * n
        self._sums[1] += (out.detach().argmax(1) == y).sum()
        for name, term in terms.items():  # CEM's term is logged on its own; the others' sum beside it
            self._sums[2 if name == "cem" else 3] += term.detach() * n

    def step_key(self) -> tuple:
        """Everything a captured step bakes in; a change (lr milestone, CEM switching on, a pruned or
        rebuilt model or optimizer) makes the stepper capture afresh."""
        return (self._step_lr, tuple(g["base_lr"] for g in self.opt.param_groups), id(self.opt),
                params_signature(self.model), self.defenses.capture_key())

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        loader = self.train_loader
        loader.set_epoch(epoch)
        iters = len(loader)
        base_server = self.server_lr(epoch)
        scale = base_server / self.s.learning_rate
        self._step_lr = base_server
        self._sums.zero_()
        warmup_epoch = self.s.warmup and epoch == 0
        key = self.step_key()
        seen = 0
        bar = tqdm(loader, total=iters, desc=f"epoch {epoch + 1}/{self.s.num_epochs}", leave=False,
                   disable=not self.progress, unit="batch")
        for it, (x, y) in enumerate(bar):
            warm = (it + 1) / iters if warmup_epoch else 1.0
            for g in self.opt.param_groups:
                g["lr"] = g["base_lr"] * scale * warm
            if warmup_epoch:  # the lr changes every step: nothing to replay
                self._step(x, y)
            else:
                self.stepper(key, x, y)
            seen += len(y)
        bar.close()
        loss_sum, correct, cem_sum, other_sum = self._sums.tolist()  # the epoch's one sync
        return {"lr": base_server, "train_loss": loss_sum / max(seen, 1),
                "train_acc": 100.0 * correct / max(seen, 1), "cem_term": cem_sum / max(seen, 1),
                "other_defense_term": other_sum / max(seen, 1)}

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self):
        st = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            st["cuda"] = torch.cuda.get_rng_state_all()
        return st

    def save(self):
        ck = {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
              "architecture": architecture_record(self.model),
              "defenses": self.defenses.state_dict(), "rng": self._rng_state(), "best": dict(self.best),
              "elapsed": self.elapsed, "frozen": sorted(self.frozen)}
        torch_save_atomic(ck, self.ckpt_dir / "last.pt")

    def _remember_best(self) -> None:
        # A copy on the device (~40 MB for vgg11), written to best.pt by the next checkpoint: cheaper than
        # writing it every time it improves when checkpoints are seconds apart (CUDA).
        self._best_pending = {"epoch": self.epoch, "architecture": architecture_record(self.model),
                              "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}

    def checkpoint(self) -> None:
        """best.pt (if a better epoch came since the last write), then last.pt: both describe this moment,
        so a resumed run replays exactly the epochs after it."""
        if self._best_pending is not None:
            torch_save_atomic(self._best_pending, self.ckpt_dir / "best.pt")
            self._best_pending = None
        self.save()
        self._saved_at, self._saved_epoch = time.perf_counter(), self.epoch

    def resume(self) -> bool:
        """Loads checkpoints/last.pt if present; returns whether it did."""
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return False
        ck = load_checkpoint(path, self.device, fix="use --force to start the run over")
        try:
            shapes_before = architecture_record(self.model)["shapes"]
            load_split_state(self.model, ck)
            self.frozen = set(ck.get("frozen") or ())  # the optimizer below must hold what the saved one held
            if architecture_record(self.model)["shapes"] != shapes_before or self.frozen:
                self.structure_changed()  # a pruned run: the optimizer must hold the new tensors
            self.opt.load_state_dict(ck["optimizer"])
        except Exception as e:  # a checkpoint from another config or a damaged file
            raise UserError(f"cannot resume from {path}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}; "
                            "use --force to start the run over") from None
        self.defenses.load_state_dict(ck["defenses"])
        self.defenses.to(self.device)
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if "cuda" in ck["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
        self.epoch, self.best, self.elapsed = ck["epoch"], ck["best"], ck["elapsed"]
        self._saved_epoch = self.epoch
        truncate_csv(self.run_dir / "train_log.csv", self.epoch)
        return True

    # ------------------------------------------------------------------ the loop
    def _diverged(self, what: str, epoch: int):
        kept = f"epoch {self._saved_epoch}" if self._saved_epoch else "none written yet"
        raise RunFailed(f"{what} in epoch {epoch + 1}; the last good checkpoint ({kept}) is kept; lower "
                        "--learning_rate or --lambd, or check the data")

    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Trains until num_epochs; `stop_after` ends early after that many epochs (tests of resume)."""
        from defenses import CEM, lambda_eff  # local: keeps the engine importable without defences

        cem = self.defenses.find("cem")
        resets = best_resets(self.s.num_epochs) if self.s.select_on == "test" else []
        start = self.defenses.on_train_start(self)  # each defence does its one-off work only once
        if start:
            self.log("defences ready: " + "  ".join(f"{k} {v:.4g}" for k, v in start.items()))
        bar = tqdm(range(self.epoch, self.s.num_epochs), initial=self.epoch, total=self.s.num_epochs,
                   desc="training", disable=not self.progress, unit="epoch")
        for epoch in bar:
            t0 = time.perf_counter()
            self.defenses.on_epoch_start(self, epoch)
            cem_active = isinstance(cem, CEM) and cem.lambd > 0 and cem.state is not None
            stats = self.train_epoch(epoch)
            bad = [k for k in ("train_loss", "cem_term", "other_defense_term") if not math.isfinite(stats[k])]
            if bad:  # checked once per epoch (the sums are already on the host): no per-batch sync
                self._diverged(f"the training loss became non-finite ({bad[0]} = {stats[bad[0]]})", epoch)
            val_acc = self.evaluate(self.select_loader)
            # Losses are measured before each step, so the last steps of an epoch can blow the weights up
            # (an lr far too large) with every loss finite; nothing after this (defences, checkpoints,
            # attacks) may get a model whose outputs overflow.
            if not self.outputs_finite:
                self._diverged("the model's outputs became non-finite (an SGD step overflowed)", epoch)
            extra = self.defenses.on_epoch_end(self)
            self.epoch = epoch + 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            lam = lambda_eff(cem.lambd, stats["lr"], cem.lr_coupling) if isinstance(cem, CEM) else 0.0
            row = {"epoch": self.epoch, "lr": f"{stats['lr']:.6g}", "lambda_eff": f"{lam:.6g}",
                   "train_loss": f"{stats['train_loss']:.5f}", "train_acc": f"{stats['train_acc']:.3f}",
                   "cem_loss": f"{stats['cem_term'] / lam:.6g}" if cem_active else "",
                   "val_acc": f"{val_acc:.3f}", "cem_mean_var": _fmt(extra.get("cem_mean_var")),
                   "cem_logdet": _fmt(extra.get("cem_logdet")), "epoch_time_s": f"{dt:.2f}"}
            append_csv_row(self.run_dir / "train_log.csv", {k: row[k] for k in LOG_FIELDS})
            if self.epoch - 1 in resets:  # a function of the epoch alone, so a resumed run resets alike
                self.best = {"acc": -1.0, "epoch": 0}
            others = {k: v for k, v in extra.items() if not k.startswith("cem_")}
            if stats["other_defense_term"]:  # e.g. NoPeek's weighted dCor; cem_loss is CEM's alone
                others = {"encoder_loss_other": stats["other_defense_term"], **others}
            if others:  # e.g. the adversarial defence's decoder SSIM; not a train_log.csv column
                self.log(f"epoch {self.epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in others.items()))
            if val_acc > self.best["acc"]:
                self.best = {"acc": val_acc, "epoch": self.epoch}
                self._remember_best()
            last = self.epoch >= self.s.num_epochs or (stop_after is not None and self.epoch >= stop_after)
            if last or time.perf_counter() - self._saved_at >= self.checkpoint_seconds:
                self.checkpoint()
            bar.set_postfix(loss=f"{stats['train_loss']:.3f}", acc=f"{stats['train_acc']:.1f}",
                            val=f"{val_acc:.1f}")
            if stop_after is not None and self.epoch >= stop_after:
                break
        bar.close()
        return {"epochs_done": self.epoch, "best_val_acc": self.best["acc"], "best_epoch": self.best["epoch"],
                "train_time_s": self.elapsed}


def _fmt(v):
    return "" if v is None else f"{v:.6g}"
