"""The one exception type for mistakes a user can make and fix."""


class ZooError(Exception):
    """A user-facing error: its message is one sentence that says what to do.

    The CLI prints it without a traceback and exits with status 2.
    """
