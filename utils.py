"""Small shared helpers: user-facing errors, seeding, device choice, atomic result files, the one
checkpoint loader, image scaling.

torch and numpy are imported where they are used, not here: the sweep's planner and the run lifecycle's
flag, identity and run-folder modules import this module once per configuration and must not pay
seconds for importing torch.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import pickle
import random
import re
import signal
import stat
import tempfile
import threading
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


_BREAKS = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # controls, format (bidi) characters, lone surrogates, line breaks


def one_line(value) -> str:
    """`value` as text without line breaks or invisible control characters (newlines, carriage
    returns, terminal escapes, U+2028, bidi overrides ...): each becomes a space, so a folder name or a
    recorded string printed in a message cannot start a forged `error:` line, reach the terminal as an
    escape code, nor start a new table row or heading in a report."""
    return "".join(" " if unicodedata.category(c) in _BREAKS else c for c in str(value))


shown = one_line  # for messages: reads better at the call site


class UserError(Exception):
    """A problem with the user's flags, paths or files.

    Entry points print its message as one line and exit with status 2, never a traceback.
    The message should name the problem and the fix.
    """


class RunFailed(Exception):
    """The run started correctly but could not produce valid results (e.g. the loss became non-finite).

    Its status is recorded as `failed` in metrics.json; entry points print one line and exit with status 1.
    """


class OutOfSpace(Exception):
    """The disk filled while a result or checkpoint was written.

    Files are replaced atomically, so everything saved before is intact: the run resumes from its last
    checkpoint once space is freed. Entry points print one line and exit with status 1.
    """

    @classmethod
    def at(cls, path=None) -> "OutOfSpace":
        path = path and os.path.abspath(path)
        where = f" holding {os.path.dirname(path)} while writing {os.path.basename(path)}" if path else ""
        return cls(f"no space left on the device{where}; nothing saved earlier was overwritten: free space, "
                   "then rerun the same command (add --resume to continue training)")


class NotStrictJSON(ValueError):
    """A run file this project cannot have written: it holds NaN or ±Infinity (Python's json reads them,
    but write_json stores null and names the value under `non_finite`), or it is larger or more deeply
    nested than any run file. It was made or edited by something else, so it is refused, not read."""


def reject_non_finite(token: str):
    """json.load's parse_constant hook: called for the bare words NaN, Infinity and -Infinity."""
    raise NotStrictJSON(f"holds a bare {token}, which is not JSON (this project writes null for a "
                        "non-finite number)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, the sweep), raised by the handler `stop_on_sigterm` installs: work stops as
    on Ctrl-C, saved and resumable. Entry points exit 143 for it and 130 for Ctrl-C (128 + the signal),
    as run_exp.sh does, so a caller can tell who stopped it."""


def _terminate(signum, frame):
    # Once only: a scheduler and a sweep may both send it, and a second one must not cut the saving short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def stop_on_sigterm() -> None:
    """Entry points only: without this, SIGTERM kills the process with no clean-up and no message."""
    signal.signal(signal.SIGTERM, _terminate)


@contextmanager
def signals_deferred():
    """SIGINT/SIGTERM that arrive inside the block take effect when it ends, so that files which must
    change together do (an attack's results, then the resumable checkpoint they make obsolete)."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    caught: list = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            handler = before[s]
            if callable(handler):  # called here, now: no second trip through the OS, whose timing can vary
                handler(s, None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(s)


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


TMP_SUFFIX = ".tmp"  # atomic writes go through `.<name>.<random>.tmp` beside the target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_replace(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():  # os.replace would fail with a traceback after the work
        raise UserError(f"'{shown(path)}' is a folder where a file is written; remove or rename it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results private to this user
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if disk_full(err):
            raise OutOfSpace.at(path) from err
        raise


def disk_full(err: BaseException) -> bool:
    """True if `err` or an exception it wraps is ENOSPC/EDQUOT; torch.save reports a failed write as a
    RuntimeError whose context is the OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def resolve_path(spec: str, data_root, what: str) -> Path:
    """A data path as given, else under --data_root (npz files, image folders)."""
    p = Path(spec).expanduser()
    candidates = [p] if p.is_absolute() or data_root is None else [p, Path(data_root).expanduser() / p]
    for c in candidates:
        if c.exists():
            return c
    raise UserError(f"{what} '{spec}' not found (looked in: {', '.join(str(c) for c in candidates)}); "
                    "check the path")


def write_file_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with a new regular file holding `data`: a symlink at `path` is replaced, never
    written through, so writing into a folder someone else prepared cannot reach a file outside it."""
    _atomic_replace(Path(path), lambda f: f.write(data))


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically so a killed process never leaves a half-written results file.

    The file is always strict JSON: a non-finite number becomes null, and a top-level object gets
    `non_finite: {"a.b.c": "nan"}` saying which values were replaced and what they were.
    """
    bad: dict = {}
    clean = _finite_only(json.loads(json.dumps(obj, default=_json_default)), "", bad)
    if bad and isinstance(clean, dict):
        clean["non_finite"] = {**clean.get("non_finite", {}), **bad}
    data = json.dumps(clean, indent=2, sort_keys=False, allow_nan=False).encode()
    _atomic_replace(Path(path), lambda f: f.write(data + b"\n"))


def _finite_only(o, where: str, bad: dict):
    if isinstance(o, float) and not math.isfinite(o):
        bad[where] = str(o)
        return None
    if isinstance(o, dict):
        return {k: _finite_only(v, f"{where}.{k}" if where else str(k), bad) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite_only(v, f"{where}[{i}]", bad) for i, v in enumerate(o)]
    return o


def _json_default(o):
    import numpy as np
    import torch

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# Far beyond anything a run file holds (metrics.json is kilobytes, nested a handful of levels deep), and
# low enough that a planted file cannot exhaust memory or Python's recursion in a reader downstream.
JSON_MAX_BYTES = 64 * 2**20
JSON_MAX_DEPTH = 64


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON that Python reads as infinity
        raise NotStrictJSON(f"holds {text[:40]}, which overflows to {value} (this project writes null for a "
                            "non-finite number)")
    return value


def _float_sized_int(text: str) -> int:
    """Integers a float can hold: 10**400 is valid JSON that every mean, plot and format downstream would
    overflow on (OverflowError), and no run file holds one."""
    if len(text.lstrip("-")) > 308:
        raise NotStrictJSON(f"holds the integer {text[:20]}… of {len(text.lstrip('-'))} digits, beyond what a "
                            "float holds (this project never writes one)")
    return int(text)


def _unique_keys(pairs: list) -> dict:
    """json's object_pairs_hook: a key twice in one object (`"status": "training", "status": "finished"`)
    reads as its last value in Python and its first in some other readers; write_json never writes one."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise NotStrictJSON(f"holds the key {one_line(repr(k))[:60]} twice in one object (this project "
                                "never writes a key twice)")
        out[k] = v
    return out


def _depth_ok(obj: Any) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, (dict, list)):
            if depth > JSON_MAX_DEPTH:
                return False
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def read_json(path: str | Path) -> Any:
    """Strict, as write_json writes: a bare NaN or Infinity, a number that overflows to one (or an
    integer no float holds), or a key twice in one object raises NotStrictJSON; a file too large or too
    deeply nested for a run file raises NotStrictJSON too (all ValueErrors, which every reader turns
    into one line naming the file)."""
    with open(path, "rb") as f:
        raw = f.read(JSON_MAX_BYTES + 1)
    if len(raw) > JSON_MAX_BYTES:
        raise NotStrictJSON(f"is larger than {JSON_MAX_BYTES // 2**20} MiB, far more than any run file holds")
    too_deep = NotStrictJSON(f"is nested more than {JSON_MAX_DEPTH} levels deep, which no run file is")
    try:
        data = json.loads(raw, parse_constant=reject_non_finite, parse_float=_finite_float,
                          parse_int=_float_sized_int, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise too_deep from None
    if not _depth_ok(data):
        raise too_deep
    return data


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """Ctrl-C or SIGTERM (scancel, a time limit) mid-save takes effect once the file is complete: raised
    inside torch.save's zip writer, it would surface as torch's RuntimeError ("unexpected pos") and the
    run would end as failed instead of interrupted and resumable."""
    import torch

    with signals_deferred():
        _atomic_replace(Path(path), lambda f: torch.save(obj, f))


class UnsafeCheckpoint(UserError):
    """The file is a pickle that asks for more than tensors, numbers, strings and containers."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu", fix: str = "") -> Any:
    """Every checkpoint the project reads comes through here (DESIGN.md §11): run folders are shared
    and attacked by others, so a file is only ever read with `weights_only=True`, which cannot run
    code. What the project saves (state_dicts, optimizer states, RNG tensors, records of numbers and
    strings) needs nothing beyond torch's default weights-only set, so nothing is allow-listed.

    A refused file is one UserError naming it (UnsafeCheckpoint when it pickles other objects);
    `fix` ends that line with what the caller's user can do about it.
    """
    import torch

    path = Path(path)
    end = f"; {fix}" if fix else ""
    try:
        with warnings.catch_warnings():
            # Foreign pickles trip a protocol warning on stderr; the refusal below says it in one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # what the weights-only unpickler raises for anything it refuses
        # torch >= 2.4 says "GLOBAL x.y was not an allowed global", older ones "Unsupported class x.y"
        found = re.search(r"GLOBAL (\S+) was not an allowed global|Unsupported class (\S+)", str(e))
        if found:
            raise UnsafeCheckpoint(f"{path} holds pickled Python objects ({found.group(1) or found.group(2)}), "
                                   f"which can run arbitrary code when loaded; refusing to load it{end}") from None
        why = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        raise UnsafeCheckpoint(f"{path} is not a checkpoint of tensors and plain values (the weights-only loader "
                               f"stopped at: {why.group(1)[:120] if why else 'unknown pickle data'}); refusing to "
                               f"load it{end}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or type(e).__name__}{end}") from None
    except Exception as e:  # empty, truncated or not a torch file at all (zip, magic number, EOF errors)
        detail = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else ""
        raise UserError(f"cannot read {path}: empty, truncated or not a torch checkpoint ({type(e).__name__}"
                        f"{': ' + detail if detail else ''}){end}") from None


def open_append(path: str | Path, text: bool = True):
    """The one way this project appends (log.txt, train_log.csv, sweep logs): never through a symlink
    (O_NOFOLLOW), never into a FIFO or device (O_NONBLOCK, then fstat), never into a file linked from
    elsewhere (a hard link), so a folder someone else prepared cannot make a log line land outside it.
    Any of those is one UserError naming the path."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
            what = "a folder" if e.errno == errno.EISDIR else "a symlink or special file"
            raise UserError(f"'{shown(path)}' is {what} where this project appends its log; remove it "
                            "(nothing was written through it)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link to another file"
        raise UserError(f"'{shown(path)}' is {what} where this project appends its log; remove it "
                        "(nothing was written through it)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", newline="") if text else os.fdopen(fd, "ab")


def append_csv_row(path: str | Path, row: dict) -> None:
    """Append one row (through open_append); writes the header when the file is new."""
    path = Path(path)
    with open_append(path) as f:
        new = os.fstat(f.fileno()).st_size == 0
        w = csv.DictWriter(f, fieldnames=list(row.keys()))
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path: str | Path, keep: int) -> None:
    """Keep only the first `keep` data rows (used on resume to drop epochs after the checkpoint)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) <= 1 + keep:
        return
    data = "".join(",".join(r) + "\n" for r in rows[: 1 + keep]).encode()
    _atomic_replace(path, lambda fh: fh.write(data))


def _stats(t: torch.Tensor, stat: Sequence[float]) -> torch.Tensor:
    import torch

    return torch.as_tensor(stat, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)


def normalize(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0,1] images -> the network's normalised input."""
    return (x01 - _stats(x01, mean)) / _stats(x01, std)


def fmt_num(x: float) -> str:
    """Compact, filename-safe number: 0.05 -> '0.05', 16.0 -> '16'."""
    return f"{x:g}"


# The paper's schedule, in epochs of its 240-epoch runs (used by the trainer, validation and gan_adv's decoder).
PAPER_MILESTONES = (60, 120, 180, 210)  # the lr drops x0.2 from these (1-based) epochs on
PAPER_BEST_RESETS = (40, 100, 200)  # the paper code's best-accuracy tracker restarts after these


def paper_epochs(points: Sequence[int], num_epochs: int) -> list:
    """Epochs of the paper's 240-epoch schedule scaled to the run's length; never before epoch 2, so the
    first epoch of any run trains at the base lr."""
    return sorted({max(2, int(round(m * num_epochs / 240))) for m in points})


def milestones(num_epochs: int, spec: str = "paper"):
    """Epochs (counted from 1) that already run at the lr reduced x0.2, as the paper code's MultiStepLR
    stepped with 1-based epochs: 'paper' (60/120/180/210 of 240, scaled to the run's length), 'none'
    (constant lr, for short demo runs), or a comma list of epochs."""
    spec = str(spec).strip().lower()
    if spec == "paper":
        return paper_epochs(PAPER_MILESTONES, num_epochs)
    if spec == "none":
        return []
    try:
        return sorted({int(m) for m in spec.split(",") if m.strip()})
    except ValueError:
        raise UserError(f"bad --milestones '{spec}'; use paper, none, or a comma list of epochs like 60,120") from None


def best_resets(num_epochs: int):
    """1-based epochs after which the paper code forgets its best accuracy (40/100/200 of 240, scaled),
    so its "best" is the best of the last 40 epochs; only points that leave epochs after them count."""
    return sorted({e for e in (int(round(r * num_epochs / 240)) for r in PAPER_BEST_RESETS) if 1 <= e < num_epochs})


def step_decay(base: float, epoch: int, points: Sequence[int], factor: float = 0.2) -> float:
    """lr of the epoch with 0-based index `epoch` (its 1-based number is epoch + 1) when it drops
    x`factor` from each 1-based epoch of `points` on, as MultiStepLR stepped with 1-based epochs."""
    return base * factor ** sum(epoch + 1 >= m for m in points)


def scheduled_lr(base: float, epoch: int, num_epochs: int, spec: str = "paper") -> float:
    """lr of the epoch with 0-based index `epoch` under --milestones `spec`."""
    return step_decay(base, epoch, milestones(num_epochs, spec))
