"""CEM: conditional-entropy maximisation on the encoder's features (DESIGN.md §6).

Two pure functions carry the maths so they can be checked in isolation:
`fit_class_kmeans` (per-class Gaussian-mixture state, all classes at once; in cem_kmeans.py) and
`cem_batch_loss` (the per-batch conditional-entropy surrogate). `CEM` holds the state, refreshes it
after every epoch and applies the lambda schedule.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from defenses.base import Defense
from defenses.cem_kmeans import fit_class_kmeans, mixture_logdet  # noqa: F401 (part of this module's API)
from utils import UserError


# --------------------------------------------------------------------------------------------
# the batch loss
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedState:
    """Per-refresh constants of the loss, computed once so each batch runs only a few kernels.

    Group index g = class * K + cluster; one extra dummy group (index C*K, weight 0) absorbs the
    samples of classes that have no valid cluster, so no masking is needed per batch.
    """
    mu: torch.Tensor        # [C, K, D] centroids
    mu_flat: torch.Tensor   # [C*K + 1, D]
    musq: torch.Tensor      # [C, K] ||mu||^2, +inf where invalid (never nearest)
    usable: torch.Tensor    # [C] class has at least one valid cluster
    pi: torch.Tensor        # [C*K + 1]
    v: torch.Tensor         # [C*K + 1] stored variances
    a_coef: torch.Tensor    # [C*K + 1] alpha_scale / (pi * N / C); published_stats: 1 / (pi * N / C)
    floor: float
    log_entropy: bool
    gamma: float
    compile: bool = False   # fuse the loss with torch.compile when on CUDA
    published_stats: bool = False  # --cem_stats published: see _loss_and_grad
    alpha_scale: float = 10.0


@torch.no_grad()
def prepare_state(centroids, variances, weights, valid, sigma, var_threshold, n_train, log_entropy=True,
                  gamma=0.01, alpha_scale=10.0, compile=False, published_stats=False) -> PreparedState:
    num_classes, k, d = centroids.shape
    mu = centroids.detach().float()
    pad = lambda t: torch.cat([t.reshape(-1).float(), t.new_zeros(1, dtype=torch.float32)])  # noqa: E731
    pi = pad(weights)
    expected = (pi * (n_train / num_classes)).clamp_min(1e-12)
    return PreparedState(
        mu=mu, mu_flat=torch.cat([mu.reshape(-1, d), mu.new_zeros(1, d)]),
        musq=(mu * mu).sum(-1).masked_fill(~valid, float("inf")), usable=valid.any(1), pi=pi, v=pad(variances),
        a_coef=expected.reciprocal() if published_stats else alpha_scale / expected,
        floor=math.log(var_threshold * sigma**2 + gamma), log_entropy=bool(log_entropy), gamma=gamma,
        compile=bool(compile), published_stats=bool(published_stats), alpha_scale=float(alpha_scale))


def _published_lookup(y, num_classes: int, k: int) -> torch.Tensor:
    """Group index whose stored variance and weight the published code uses for each group.

    The published loss walks the distinct classes of the batch in label order and, for the j-th of
    them, reads v and pi at row j of per-sample arrays sorted by label: those of the j-th sample's
    class, which is mostly the smallest label's (model_training_paral_pruning.py, compute_class_means).
    """
    present = torch.zeros(num_classes, device=y.device).index_add_(0, y, torch.ones_like(y, dtype=torch.float32)) > 0
    rank = (present.long().cumsum(0) - 1).clamp_min(0)
    src = torch.where(present, y.sort().values[rank], torch.arange(num_classes, device=y.device))
    groups = (src.unsqueeze(1) * k + torch.arange(k, device=y.device)).reshape(-1)
    return torch.cat([groups, groups.new_full((1,), num_classes * k)])  # the dummy group stays itself


def _loss_and_grad(z, y, mu, mu_flat, musq, usable, pi, v, a_coef, floor: float, gamma: float,
                   log_entropy: bool, published_stats: bool = False, alpha_scale: float = 10.0):
    """L_C and its gradient to z, written out so backward is a single multiply.

    With sq_i = mean_d (z_i - mu_g)^2 and g the group of sample i:
    dL/dz_i = (1/#classes) * pi_g * alpha_g / n_g * f'(v_hat_g) * 2 (z_i - mu_g) / D, where
    f' = 1[log(v_hat+gamma) > floor] / (v_hat + gamma) for the log surrogate and 1 otherwise.
    alpha_g depends on counts only, and centroids/assignments carry no gradient (DESIGN §6.3).
    published_stats: each group's v, pi (and so alpha) are another group's, as published, and alpha is
    the published float32 (n * (1 / (pi N / C))) * scale, set to 0.99 only from 1 on (`if var_lambda >= 1`):
    a value in (0.99, 1), up to 0.99999994, is kept where ours caps it at 0.99.
    """
    d = z.shape[1]
    num_classes, k, _ = mu.shape
    groups = num_classes * k
    if published_stats:
        lookup = _published_lookup(y, num_classes, k)
        pi, v, a_coef = pi[lookup], v[lookup], a_coef[lookup]
    # argmin_k ||z - mu_k||^2 = argmin_k (||mu_k||^2 - 2 z.mu_k): one batched matmul
    score = torch.baddbmm(musq[y].unsqueeze(2), mu[y], z.unsqueeze(2), alpha=-2.0)
    gid = torch.where(usable[y], y * k + score.squeeze(2).argmin(1), groups)
    diff = z - mu_flat[gid]
    sq = diff.pow(2).mean(1)
    sums = torch.zeros(groups + 1, 2, device=z.device).index_add_(0, gid, torch.stack((sq, torch.ones_like(sq)), 1))
    s_g, n_g = sums[:, 0], sums[:, 1]
    if published_stats:
        alpha = n_g * a_coef * alpha_scale
        alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, 0.99), alpha)
    else:
        alpha = (n_g * a_coef).clamp_max(0.99)
    v_hat = torch.lerp(v, s_g / n_g.clamp_min(1.0), alpha)
    w = pi * (n_g > 0)
    n_cls = (n_g[:groups].view(num_classes, k).amax(1) > 0).sum().clamp_min(1).float()
    if log_entropy:
        logv = torch.log(v_hat + gamma)
        loss = torch.dot(w, (logv - floor).clamp_min(0.0)) / n_cls
        slope = (logv > floor) / (v_hat + gamma)
    else:
        loss = torch.dot(w, v_hat + 0.001) / n_cls
        slope = torch.ones_like(v_hat)
    coef = w * alpha * slope / n_g.clamp_min(1.0) * (2.0 / d) / n_cls
    return loss, diff * coef[gid].unsqueeze(1)


_compiled = {"fn": None, "failed": False}


def _fused(use_compile: bool):
    """On CUDA the ~40 small ops are launch-bound; torch.compile fuses them into a few kernels."""
    if not use_compile or _compiled["failed"]:
        return _loss_and_grad
    if _compiled["fn"] is None:
        _compiled["fn"] = torch.compile(_loss_and_grad, dynamic=False)
    return _compiled["fn"]


class _CEMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, y, st: "PreparedState"):
        args = (z, y, st.mu, st.mu_flat, st.musq, st.usable, st.pi, st.v, st.a_coef, st.floor, st.gamma,
                st.log_entropy, st.published_stats, st.alpha_scale)
        # Inside a CUDA graph the launches the fusion saves are free already: keep plain kernels.
        use_compile = st.compile and z.is_cuda and not torch.cuda.is_current_stream_capturing()
        try:
            loss, grad = _fused(use_compile)(*args)
        except Exception as e:  # no working compiler toolchain: stay correct, only slower
            if not use_compile:
                raise
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            warnings.warn(f"torch.compile of the CEM loss failed ({type(e).__name__}: {msg}); using eager mode",
                          stacklevel=2)
            _compiled["failed"] = True
            loss, grad = _loss_and_grad(*args)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad_z,) = ctx.saved_tensors
        return grad_out * grad_z, None, None


def prepared_loss(z: torch.Tensor, y: torch.Tensor, st: "PreparedState") -> torch.Tensor:
    return _CEMLoss.apply(z.reshape(z.shape[0], -1).float(), y.long(), st)


def cem_batch_loss(
    z: torch.Tensor,
    y: torch.Tensor,
    centroids: torch.Tensor,
    variances: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor,
    sigma: float,
    var_threshold: float,
    n_train: int,
    log_entropy: bool = True,
    gamma: float = 0.01,
    alpha_scale: float = 10.0,
    published_stats: bool = False,
) -> torch.Tensor:
    """Conditional-entropy surrogate L_C of DESIGN §6.3 for one batch; gradient flows to z only.

    Each z_i is assigned to the nearest valid centroid of its own class. For every hit
    (class, cluster) with n members in the batch: b = mean of (z - mu)^2 over members and dims,
    alpha = min(alpha_scale * n / (pi * N / C), 0.99), v = alpha * b + (1 - alpha) * v_stored,
    term = pi * relu(log(v + gamma) - log(tau * sigma^2 + gamma)) (or pi * (v + 0.001)).
    L_C = sum of terms / number of distinct classes in the batch (samples of a class with no
    valid cluster are skipped). Vectorised: no Python loop over classes or clusters.
    """
    st = prepare_state(centroids, variances, weights, valid, sigma, var_threshold, n_train, log_entropy,
                       gamma, alpha_scale, published_stats=published_stats)
    return prepared_loss(z, y, st)


def lambda_eff(lambd: float, lr: float, coupling: str = "paper") -> float:
    """The paper code's two-pass update weighs L_C by lambda*0.001/lr for every server lr >= 4.1e-4,
    with no cap (so more than lambda for lr below 1e-3), and by lambda below; `none` keeps lambda."""
    if coupling == "none" or lr < 4.1e-4:
        return lambd
    return lambd * 0.001 / lr


# --------------------------------------------------------------------------------------------
# the defence object
# --------------------------------------------------------------------------------------------
# Feature variance below this fraction of the noise variance means the encoder sends a constant.
# Healthy CEM runs shrink it to ~0.4 sigma^2; the collapsed NoPeek + CEM run reached 1e-7 sigma^2.
COLLAPSE_RATIO = 1e-3


class CEM(Defense):
    """Holds the per-class mixture state, refreshes it after each epoch, adds lambda_eff * L_C."""

    name = "cem"

    def __init__(self, lambd, sigma, var_threshold, num_classes, n_train, k, log_entropy=True,
                 lr_coupling="paper", gamma=0.01, kmeans_iters=50, diag_every=10, seed=0, compile=True,
                 refresh_aug=True, stats="own", kmeans="ours"):
        self.lambd, self.sigma, self.var_threshold = float(lambd), float(sigma), float(var_threshold)
        self.num_classes, self.n_train, self.k = int(num_classes), int(n_train), int(k)
        self.log_entropy, self.lr_coupling, self.gamma = bool(log_entropy), lr_coupling, gamma
        self.kmeans_iters, self.diag_every, self.seed = kmeans_iters, diag_every, seed
        self.compile = compile  # only ever used on CUDA
        self.refresh_aug = bool(refresh_aug)  # fit the mixture on augmented images, as the paper code
        if stats not in ("own", "published"):
            raise UserError(f"--cem_stats must be own or published (got '{stats}')")
        self.published_stats = stats == "published"
        if kmeans not in ("ours", "published"):
            raise UserError(f"--cem_kmeans must be ours or published (got '{kmeans}')")
        self.published_kmeans = kmeans == "published"
        self.state: Optional[dict] = None  # centroids, variances, weights, valid
        self._prepared: Optional[PreparedState] = None
        self._prepared_version = 0  # bumped whenever _prepared is replaced rather than updated in place
        self.refreshes = 0
        self.kmeans_info: dict = {}  # the last fit's Lloyd updates (bench_train.py reports them)
        self._collapse_said = False

    def encoder_loss(self, z, x, y, lr):
        if self.lambd == 0 or self.state is None:
            return None
        return lambda_eff(self.lambd, lr, self.lr_coupling) * self.raw_loss(z, y)

    def raw_loss(self, z, y):
        if self._prepared is None:
            self._prepare()
        return prepared_loss(z, y, self._prepared)

    def _prepare(self) -> None:
        """Per-refresh constants of the loss; written into the existing tensors when shapes allow, so a
        captured training step (which holds their addresses) sees the new mixture."""
        s = self.state
        new = prepare_state(s["centroids"], s["variances"], s["weights"], s["valid"], self.sigma,
                            self.var_threshold, self.n_train, self.log_entropy, self.gamma, compile=self.compile,
                            published_stats=self.published_stats)
        old = self._prepared
        fields = [f for f, v in vars(new).items() if isinstance(v, torch.Tensor)]
        if old is not None and all(getattr(old, f).shape == getattr(new, f).shape
                                   and getattr(old, f).device == getattr(new, f).device for f in fields):
            for f in fields:
                getattr(old, f).copy_(getattr(new, f))
            old.compile = new.compile
        else:
            self._prepared = new
            self._prepared_version += 1

    def capture_key(self):
        return (self.lambd > 0 and self.state is not None, self._prepared_version)

    def set_capture(self, enabled):
        self.compile = self.compile and not enabled

    def refresh(self, z: torch.Tensor, y: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(self.seed + self.refreshes)
        init = None if self.state is None else self.state["centroids"]
        mu, var, w, valid = fit_class_kmeans(z, y, self.num_classes, self.k, init=init,
                                             iters=self.kmeans_iters, generator=gen, info=self.kmeans_info,
                                             published=self.published_kmeans)
        self.state = {"centroids": mu, "variances": var, "weights": w, "valid": valid}
        self._prepare()
        self.refreshes += 1

    def on_epoch_end(self, trainer):
        if self.lambd == 0:
            return {}
        z, y = trainer.train_features(augment=self.refresh_aug)
        self.refresh(z, y)
        logs = {"cem_mean_var": float(self.state["variances"][self.state["valid"]].mean())}
        self._check_collapse(z, trainer)
        if self.diag_every and self.refreshes % self.diag_every == 0:
            s = self.state
            logs["cem_logdet"] = mixture_logdet(z, y, s["centroids"], s["valid"], s["weights"], self.sigma)
        return logs

    def _check_collapse(self, z, trainer) -> None:
        """Says once when the features have shrunk to a constant (seen with NoPeek + CEM): the server
        then sees noise only and the run is at chance, which the accuracy column alone does not explain."""
        spread = float(z.var(0).mean()) if len(z) > 1 else float("nan")
        if self.sigma > 0 and spread < COLLAPSE_RATIO * self.sigma ** 2 and not self._collapse_said:
            self._collapse_said = True
            trainer.log(f"warning: the features have collapsed after epoch {trainer.epoch + 1}: their variance "
                        f"across training images is {spread:.3g} per dimension, under {COLLAPSE_RATIO:g} x sigma^2 "
                        f"({self.sigma ** 2:.3g}), so the server sees noise only; lower --lambd or the other "
                        "defence's strength")

    def state_dict(self):
        st = None if self.state is None else {k: v.cpu() for k, v in self.state.items()}
        return {"state": st, "refreshes": self.refreshes}

    def load_state_dict(self, state):
        self.state = state["state"]
        self.refreshes = state["refreshes"]
        self._prepared = None

    def to(self, device):
        if self.state is not None:
            self.state = {k: v.to(device) for k, v in self.state.items()}
            self._prepared = None
        return self
