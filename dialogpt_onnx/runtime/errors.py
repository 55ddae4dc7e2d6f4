"""The project's command outcomes besides success. Every CLI turns them into exit codes through one runner
(runtime.cli.run_command): a UsageError is one line and exit 2, a CommandFailure its own code, Signalled
128 + the signal; anything else is a bug (exit 3)."""

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


class CommandFailure(Exception):
    """A command that ran as asked and did not succeed (e.g. an export below the parity thresholds): one
    line, `label: message`, and the exit code the command documents for it."""

    exit_code = 1
    label = "failed"


class Signalled(BaseException):
    """SIGINT, SIGTERM or SIGHUP turned into an exception in the main thread (a BaseException, like
    KeyboardInterrupt, so that no `except Exception` swallows it); the command exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
