"""Error types shared by every entry point. Standard library only, so the sweep's planner and the
report can use them without importing torch."""


class UserError(Exception):
    """A problem with the user's flags, paths or files.

    Entry points print its message as one line and exit with status 2, never a traceback.
    The message should name the problem and the fix.
    """


class RunFailed(Exception):
    """The run started correctly but could not produce valid results (e.g. the loss became non-finite).

    Its status is recorded as `failed` in metrics.json; entry points print one line and exit with status 1.
    """
