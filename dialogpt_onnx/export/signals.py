"""Terminating signals during an export: SIGINT, SIGTERM and SIGHUP become `Interrupted` in the main
thread (so the pipeline's cleanup runs whichever signal ends it), or are held while the output is swapped in.
Process-wide state, kept apart from the OUT_DIR rules (outdir.py)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from .errors import Interrupted

_TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"installed": False, "deferring": False, "pending": 0, "received": 0}


def _handler(signum: int, frame: object) -> None:
    _state["received"] = signum
    if _state["deferring"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


def reraise_interruption() -> None:
    """For broad `except` clauses around C-heavy calls (torch, safetensors): an Interrupted raised inside
    them may come back as their own error; if a terminating signal arrived, it is the real cause."""
    if _state["received"]:
        raise Interrupted(_state["received"])


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread (for the CLI), so the pipeline's
    cleanup runs whichever signal ends it."""
    old = {s: signal.signal(s, _handler) for s in _TERMINATING}
    _state["installed"], _state["received"] = True, 0
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["installed"] = False


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold terminating signals while the output is swapped in; raise afterwards if one came."""
    if not _state["installed"]:
        yield
        return
    _state["deferring"], _state["pending"] = True, 0
    try:
        yield
    finally:
        _state["deferring"] = False
    if _state["pending"]:
        raise Interrupted(_state["pending"])
