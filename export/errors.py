"""The exporter's outcomes besides success: a user error (exit 2), failed parity (exit 1), a signal."""

from runtime.errors import UsageError


class ExportError(UsageError):
    """Bad input to the exporter; the message names the problem and the fix."""


class ParityError(Exception):
    """An export below the --verify thresholds; the CLI exits 1 and writes nothing."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP during an export (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` swallows it); the pipeline removes its temporary dir and the CLI exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
