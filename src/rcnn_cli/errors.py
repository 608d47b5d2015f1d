"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or configuration: a clear one-line message, no traceback."""


class Interrupted(Exception):
    """Ctrl-C, handled: ``message`` says what was kept; ``resumable``: rerunning with ``--resume``
    continues (the CLI prints one line and exits 130). Not a ``KeyboardInterrupt``, so that it
    reaches the CLI's handler through typer, which turns those into a silent exit code."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.resumable = resumable


class ImageError(UserError):
    """An image file that is missing, unreadable, truncated or too large."""
