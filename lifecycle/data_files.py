"""The contents of a run's own data files (`--dataset npz:...`) belong to its identity.

The run identity holds the dataset *spec*, e.g. `npz:faces.npz`; without more, a new file at the same path
would pass for the old one and its finished results would be reused. So config.json records, per npz
file, its size, modification and inode change times and SHA-256 (`data_files`), and a run is reused,
resumed or attacked only while the files still hold those contents: size and both times unchanged count
as unchanged (nothing is read), otherwise the file is hashed again (a `touch` alone is no change; new
contents with the old mtime put back, `touch -r`, still change the inode change time).
Image folders (`imagefolder:`) are not digested: hashing every image on each check costs more than it
saves. Standard library only (the sweep's planner checks runs without importing torch).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from lifecycle.flags import DEFAULT_DATA_ROOT
from utils import UserError, resolve_path

CHUNK = 1 << 20


def npz_paths(cfg: dict) -> list[Path]:
    """The npz files of `npz:<file>`, `npz:<file>,<fraction>` or `npz:<train>,<test>`; [] for other data."""
    ds = str(cfg.get("dataset") or "")
    if not ds.startswith("npz:"):
        return []
    parts = [p.strip() for p in ds[4:].split(",") if p.strip()]
    out = []
    for p in parts:
        try:
            float(p)  # a test fraction, not a file
            continue
        except ValueError:
            pass
        out.append(resolve_path(p, cfg.get("data_root") or DEFAULT_DATA_ROOT, "npz file").resolve())
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def record(cfg: dict) -> list[dict]:
    """What config.json keeps of the run's npz files (hashed once, at the start of training)."""
    out = []
    for p in npz_paths(cfg):
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                    "sha256": _sha256(p)})
    return out


def changed(recorded, cfg: dict) -> Optional[str]:
    """Why the run's npz files no longer hold what it trained on, or None (also for runs that recorded
    nothing: made before this check, or on other data)."""
    if not isinstance(recorded, list) or not recorded:
        return None
    try:
        now = npz_paths(cfg)
    except UserError as e:
        return str(e)
    if len(now) != len(recorded):
        return f"it trained on {len(recorded)} npz file(s), the dataset now names {len(now)}"
    for rec, p in zip(recorded, now):
        if not isinstance(rec, dict):
            return "config.json's data_files entry is damaged"
        st = p.stat()
        # `touch -r` sets the mtime back after new contents are written; nothing sets the inode change
        # time back, so the shortcut needs all three (records without it are always hashed).
        if (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (rec.get("size"), rec.get("mtime_ns"), rec.get("ctime_ns")):
            continue
        if st.st_size != rec.get("size") or _sha256(p) != rec.get("sha256"):
            return (f"{p} changed since the run trained on it (sha256 {str(rec.get('sha256'))[:12]}…, "
                    f"{rec.get('size')} bytes; now {st.st_size} bytes, other contents)")
    return None
