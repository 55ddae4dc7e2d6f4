"""User-facing errors of the runtime: the CLI prints the message as one line and exits non-zero."""


class ModelDirError(ValueError):
    """A model dir that is missing, incomplete, corrupted, or of an unknown manifest version."""
