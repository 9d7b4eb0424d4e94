"""Every file the project writes into a run or report folder goes through here (DESIGN.md §11): whole files
as a new file moved into place, appends opened without following links, strict JSON reading, and the one
checkpoint loader (weights_only=True)."""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import pickle
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .errors import NotStrictJSON, OutOfSpace, UserError, one_line, reject_non_finite, shown, signals_deferred

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
