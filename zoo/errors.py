"""The one exception type for mistakes a user can make and fix."""


class ZooError(Exception):
    """A user-facing error: its message is one sentence that says what to do.

    The CLI prints it without a traceback and exits with status 1 (2 is for usage errors). `already_reported` marks the
    copies that processes other than rank 0 of a distributed run raise: rank 0 tells the user.
    """

    def __init__(self, message: str, already_reported: bool = False):
        super().__init__(message)
        self.already_reported = already_reported
