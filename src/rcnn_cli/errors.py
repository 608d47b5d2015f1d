"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or configuration: a clear one-line message, no traceback."""


class ImageError(UserError):
    """An image file that is missing, unreadable, truncated or too large."""
