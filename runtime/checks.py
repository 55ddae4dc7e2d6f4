"""Argument checks shared by every public entry point (API, CLI, server, exporter, trainer): one wording
for "an integer >= N", "a finite number in a range" and "too long for the context"."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ContextOverflow, UsageError


def is_integer(x: object) -> bool:
    """A real integer: Python or numpy ints, never bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def is_number(x: object) -> bool:
    """A finite real number (ints included), never a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_) and math.isfinite(x)


def integer(name: str, value: object, minimum: int = 0, none: str | None = None, note: str = "",
            error: type[Exception] = UsageError) -> int | None:
    """`value` as an int >= minimum; None passes when `none` says what None means (e.g. "all cores").
    `note` adds what a special value means (e.g. "0 turns it off")."""
    if value is None and none is not None:
        return None
    if not is_integer(value) or value < minimum:  # type: ignore[operator]
        what = f"an integer >= {minimum}" + (f" ({note})" if note else "")
        what = f"None ({none}) or {what}" if none is not None else what
        raise _error(error, f"{name} must be {what}, got {value!r}", name)
    return int(value)  # type: ignore[arg-type]


def number(name: str, value: object, what: str = "a finite number", ok: bool = True,
           error: type[Exception] = UsageError) -> float:
    """`value` as a float: finite, and `ok` (the caller's range test) true; `what` describes the range."""
    if not is_number(value) or not ok:
        raise _error(error, f"{name} must be {what}, got {value!r}", name)
    return float(value)  # type: ignore[arg-type]


def fits_context(tokens: int, new_tokens: int, context: int) -> None:
    """The one context check: an input of `tokens` plus `new_tokens` to generate must fit `context`."""
    if tokens + new_tokens > context:
        asked = f" + {new_tokens} new tokens" if new_tokens else ""
        raise ContextOverflow(f"input of {tokens} tokens{asked} exceeds the context of {context} tokens: shorten "
                              "the input (or the history) or ask for fewer new tokens")


def _error(kind: type[Exception], message: str, name: str) -> Exception:
    return kind(message, name) if issubclass(kind, UsageError) else kind(message)
