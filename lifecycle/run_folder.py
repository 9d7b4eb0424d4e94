"""The run folder `<folder>/<filename>/`: its files, its state, and the lock held while a process works in it.

Standard library only (the sweep's planner reads run states without importing torch).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path

from lifecycle.data_files import changed
from lifecycle.identity import identity, identity_differences
from lifecycle.results import attack_state
from utils import UserError, open_append, read_json, shown

TMP_GLOB = ".*.tmp"  # what utils' atomic writes leave behind when killed mid-write
FOLDERS = ("checkpoints", "images", "attacks")  # the folders a run makes in its folder: files only inside
APPENDED = ("log.txt", "train_log.csv")  # the files a run appends to; all others are replaced whole


def _read_json(path: Path, what: str) -> dict:
    try:
        data = read_json(path)  # strict: a bare NaN was not written by this project
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path} ({what}) is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "fix or delete it, or start the run over with --force") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} ({what}) is not a JSON object; delete it or start the run over with --force")
    return data


class Run:
    """Paths, recorded state and lock of one run folder."""

    def __init__(self, folder, filename: str):
        self.dir = Path(folder) / filename
        self.metrics_path = self.dir / "metrics.json"
        self.config_path = self.dir / "config.json"
        self.train_log = self.dir / "train_log.csv"
        self.last_ckpt = self.dir / "checkpoints" / "last.pt"
        self.best_ckpt = self.dir / "checkpoints" / "best.pt"
        self._log_file = None
        self._lock_fd = None
        self._created: list = []

    # ------------------------------------------------------------------ recorded state
    def metrics(self) -> dict:
        return _read_json(self.metrics_path, "results")

    def config(self) -> dict:
        return _read_json(self.config_path, "the run's settings")

    def stored_identity(self):
        return self.config().get("identity") or self.metrics().get("identity")

    def finished(self) -> bool:
        return self.metrics().get("status") == "finished"

    def plan(self, cfg: dict) -> tuple:
        """(state, message) for running `cfg` here; states as in lifecycle/plan.py's docstring."""
        if not self.dir.exists() or not (self.config_path.exists() or self.metrics_path.exists()):
            return "new", ""
        ident, old = identity(cfg), self.stored_identity()
        if not old:
            return "conflict", (f"{self.dir} holds a run without a recorded identity (made by an older version); "
                                "use another --filename, or --force to redo it")
        diff = identity_differences(old, ident, "train")
        if diff:
            return "conflict", (f"{self.dir} holds another configuration (differs in: {'; '.join(diff)}); "
                                "use another --filename (or the default name), or --force to overwrite it")
        data = changed(self.config().get("data_files"), cfg)
        if data:
            return "conflict", (f"{self.dir} was trained on other data: {data}; use --force to train again on the "
                                "new contents, or another --filename")
        metrics = self.metrics()
        if "train" not in metrics:
            return ("resume" if self.last_ckpt.exists() else "new"), ""
        if cfg.get("no_attack"):
            return "finished", ""
        state, detail = attack_state(metrics, cfg)
        if state == "attack":
            return "attack", (f"{self.dir} was trained with these settings but attacked with others ({detail}); "
                              "--attack_only adds these results beside the old ones")
        if state == "incomplete":
            return "incomplete", (f"{self.dir} is trained but has no results for {detail}; "
                                  "add them with --attack_only")
        return "finished", ""

    # ------------------------------------------------------------------ working in the folder
    def open(self) -> None:
        """Create the folder (remembering what was created), lock it, and remove orphan temporary files.

        The lock is an OS lock on the folder itself (flock): it disappears with the process, so a
        `kill -9` never leaves a stale lock behind.
        """
        missing = []
        p = self.dir
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._created = missing
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"cannot create output folder '{self.dir}' ({e.strerror}); "
                            "pass a writable --folder (or another --filename)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"another process is working in {self.dir}; wait for it to end "
                                "(or stop it), or use another --filename") from None
            raise
        self._lock_fd = fd
        # Prove it, as permissions, read-only mounts and ACLs all decide (a new file: no name to plant), for
        # the run's own subfolders too: a read-only images/ would fail only once the decoder has trained.
        for d in (self.dir, *(self.dir / f for f in FOLDERS)):
            if d != self.dir and not (d.is_dir() and not d.is_symlink()):
                continue  # made when first written; a link there is refused below
            try:
                fd, probe = tempfile.mkstemp(prefix=".write_test", suffix=TMP_GLOB[2:], dir=d)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                self.close()
                what = "run folder" if d == self.dir else "folder"
                raise UserError(f"{what} '{shown(d)}' is not writable ({e.strerror}); fix its permissions "
                                "or use another --folder / --filename") from None
        try:
            self.refuse_foreign_entries()
        except UserError:
            self.close()
            raise
        for d in (self.dir, self.dir / "checkpoints"):
            for tmp in d.glob(TMP_GLOB):
                tmp.unlink(missing_ok=True)

    def refuse_foreign_entries(self) -> None:
        """One UserError naming what in the folder this project never makes and must not write through:
        a symlink (file or folder) anywhere, a FIFO, socket or device, a folder where a file goes, a
        log that is a hard link. Checked when the folder is opened, before any work: folders are sent
        between researchers, and a planted link would make a grid, a log line or a checkpoint land on
        any file the recipient can write."""
        bad = []
        for here, dirs, files in os.walk(self.dir, followlinks=False):  # a symlinked folder is not entered
            for name in sorted(dirs + files):
                p = Path(here) / name
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                top = Path(here) == self.dir
                if stat.S_ISLNK(st.st_mode):
                    bad.append(f"'{shown(p)}' is a symlink (to '{shown(os.readlink(p))}')")
                elif stat.S_ISDIR(st.st_mode):
                    if not top or name in APPENDED or name.endswith(".json"):
                        bad.append(f"'{shown(p)}' is a folder where this project writes files only")
                elif not stat.S_ISREG(st.st_mode):
                    bad.append(f"'{shown(p)}' is not a regular file (a FIFO, socket or device)")
                elif top and name in APPENDED and st.st_nlink != 1:
                    bad.append(f"'{shown(p)}' is a hard link to a file elsewhere")
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{bad[0]}{more}: this project never makes one in a run folder and does not write "
                            "through it; remove it (nothing was written)")

    def abandon(self) -> None:
        """After a failed start: remove the folders `open` created if nothing was written into them."""
        self.close()
        for d in self._created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)
        if self._log_file is None:
            self._log_file = open_append(self.dir / "log.txt")
        self._log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
        self._log_file.flush()
