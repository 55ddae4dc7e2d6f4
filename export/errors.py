"""The one error type for user mistakes: the CLI prints its message as one line and exits 2."""


class ExportError(Exception):
    """Bad input to the exporter; the message names the problem and the fix."""


class ParityError(Exception):
    """An export below the --verify thresholds; the CLI exits 1 and writes nothing."""
