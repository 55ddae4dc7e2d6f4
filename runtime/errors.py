"""The runtime's user errors. The CLIs print them as one line and exit 2; anything else is a bug (exit 3)."""

from __future__ import annotations


class UsageError(ValueError):
    """A caller's mistake (a bad argument, an input the model cannot take): the message names the problem
    and the fix. `arg` names the argument at fault, when there is one (a server reports it as `param`).
    A ValueError, so callers that caught ValueError before keep working."""

    def __init__(self, message: str, arg: str | None = None) -> None:
        super().__init__(message)
        self.arg = arg


class ContextOverflow(UsageError):
    """An input (with the tokens asked for) longer than the model's context."""


class ModelDirError(UsageError):
    """A model dir that is missing, incomplete, corrupted, or of an unknown manifest version."""
