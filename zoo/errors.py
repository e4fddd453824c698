"""The one exception type for mistakes a user can make and fix."""


class ZooError(Exception):
    """A user-facing error: its message is one sentence that says what to do.

    The CLI prints it without a traceback and exits with `exit_code`: 2 for a usage error (this
    class), 1 when the work itself failed (WorkFailed). `already_reported` marks the copies that
    processes other than rank 0 of a distributed run raise: rank 0 tells the user.
    """

    exit_code = 2

    def __init__(self, message: str, already_reported: bool = False):
        super().__init__(message)
        self.already_reported = already_reported


class WorkFailed(ZooError):
    """The command was given correctly but its work failed (training diverged, a disk filled up): exit status 1."""

    exit_code = 1
