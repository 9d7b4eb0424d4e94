"""Error types shared by every entry point. Standard library only, so the sweep's planner and the
report can use them without importing torch."""
import os


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
    """A run file holds NaN or ±Infinity. Python's json reads them, but this project never writes them
    (utils.write_json stores null and names the value under `non_finite`), so such a file was made or
    edited by something else and its numbers are not what a run recorded."""


def reject_non_finite(token: str):
    """json.load's parse_constant hook: called for the bare words NaN, Infinity and -Infinity."""
    raise NotStrictJSON(f"holds a bare {token}, which is not JSON (this project writes null for a "
                        "non-finite number)")
