"""The exporter's outcomes besides success: a user error (exit 2), failed parity (exit 1), a signal."""

from dialogpt_onnx.runtime.errors import CommandFailure, Signalled, UsageError


class ExportError(UsageError):
    """Bad input to the exporter; the message names the problem and the fix."""


class ParityError(CommandFailure):
    """An export below the --verify thresholds; the CLI exits 1 and writes nothing."""

    exit_code = 1
    label = "parity failed"


class Interrupted(Signalled):
    """SIGINT, SIGTERM or SIGHUP during an export; the pipeline removes its temporary dir and the CLI exits
    128 + signal."""
