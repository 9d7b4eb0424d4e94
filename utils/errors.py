"""The project's error types (every layer raises them; entry points turn each into one line and an exit
status), how strings from files are made one line before they are printed, and SIGTERM/SIGINT handling."""
from __future__ import annotations

import os
import signal
import threading
import unicodedata
from contextlib import contextmanager

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
