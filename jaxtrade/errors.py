"""Errors the command lines print as one line with exit code 2."""


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""
