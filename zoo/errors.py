"""The exception types for mistakes a user can make and fix."""


class ZooError(Exception):
    """A user-facing error: its message is one sentence that says what to do.

    The CLI prints it without a traceback and exits with `exit_code`: 1 when the work failed (this
    class: a damaged file, an unreadable image, a full disk, a diverged run), 2 for a usage error
    (UsageError: how the command was called). `already_reported` marks the copies that processes
    other than rank 0 of a distributed run raise: rank 0 tells the user.
    """

    exit_code = 1

    def __init__(self, message: str, already_reported: bool = False):
        super().__init__(message)
        self.already_reported = already_reported


class UsageError(ZooError):
    """The command was called wrongly (a bad flag value, an unknown model, conflicting flags, an --out that cannot
    be written): exit status 2, as click gives for its own usage errors."""

    exit_code = 2


class WorkFailed(ZooError):
    """The command was given correctly but its work failed (training diverged, a disk filled up): exit status 1.

    ZooError exits 1 too; this name says so where the distinction matters to the reader."""

    exit_code = 1
