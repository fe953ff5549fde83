"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 1."""


class UserError(Exception):
    """Bad input, a missing artifact, a mismatched file: one line, no traceback, exit 1."""
