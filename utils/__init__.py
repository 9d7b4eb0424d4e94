"""Small shared helpers every layer may use: the error types (errors.py), run and report files (files.py),
the lr schedule (schedule.py), and here seeding, device choice and image scaling. `from utils import X`
reaches all of them.

torch and numpy are imported where they are used, not here: the sweep's planner and the run lifecycle's
flag, identity and run-folder modules import this package once per configuration and must not pay
seconds for importing torch.
"""
from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Sequence

from .errors import (  # noqa: F401  (this package's API)
    NotStrictJSON,
    OutOfSpace,
    RunFailed,
    Terminated,
    UserError,
    _terminate,
    one_line,
    reject_non_finite,
    shown,
    signals_deferred,
    stop_on_sigterm,
)
from .files import (  # noqa: F401
    JSON_MAX_BYTES,
    JSON_MAX_DEPTH,
    TMP_SUFFIX,
    UnsafeCheckpoint,
    _atomic_replace,
    _umask,
    append_csv_row,
    disk_full,
    load_checkpoint,
    open_append,
    read_json,
    resolve_path,
    torch_save_atomic,
    truncate_csv,
    write_file_atomic,
    write_json,
)
from .schedule import (  # noqa: F401
    PAPER_BEST_RESETS,
    PAPER_MILESTONES,
    best_resets,
    milestones,
    paper_epochs,
    scheduled_lr,
    step_decay,
)

if TYPE_CHECKING:
    import torch


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


DEVICE_NAMES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device_name(name) -> str:
    """The --device value, lower-cased, if it is one this project knows; no torch needed, so it is
    checked with the other flags before any work (and before a finished run is reported finished)."""
    low = str(name or "auto").lower()
    if not DEVICE_NAMES.fullmatch(low):
        raise UserError(f"unknown --device '{name}'; choose auto, cpu, cuda, cuda:N or mps")
    return low


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    name = check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is visible; use --device auto or cpu")
        count = torch.cuda.device_count()
        if ":" in name and int(name[5:]) >= count:  # else torch fails later, at the first tensor moved
            raise UserError(f"--device {name} was asked for but only {count} CUDA GPU(s) are visible "
                            f"(cuda:0 to cuda:{count - 1}); pick one of them or use --device cuda")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps was asked for but MPS is not available; use --device auto or cpu")
    return torch.device(name)


def _stats(t: torch.Tensor, stat: Sequence[float]) -> torch.Tensor:
    import torch

    return torch.as_tensor(stat, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)


def normalize(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0,1] images -> the network's normalised input."""
    return (x01 - _stats(x01, mean)) / _stats(x01, std)


def fmt_num(x: float) -> str:
    """Compact, filename-safe number: 0.05 -> '0.05', 16.0 -> '16'."""
    return f"{x:g}"
