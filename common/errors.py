"""Errors the user can fix (a bad file, folder or option), told apart from program bugs.

`run.py` prints a `UserError` as one message (no traceback) and exits with status 2; every other exception is a
bug and keeps its traceback. A message names the file or option, the problem, and what to do.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input or options, explained by its message alone."""


class InputError(UserError, ValueError):
    """An input file or folder that cannot be used (the message names it)."""


class ConfigError(UserError, ValueError):
    """An option with an unknown name or a bad value (the message names the option)."""
