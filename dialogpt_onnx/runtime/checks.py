"""Argument checks shared by every public entry point (API, CLI, server, exporter, trainer): one wording
for "an integer >= N", "a finite number in a range" and "too long for the context"."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import TypeGuard

import numpy as np

from .errors import ContextOverflow, UsageError


def is_integer(x: object) -> TypeGuard[int]:
    """A real integer: Python or numpy ints, never bools."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def is_number(x: object) -> TypeGuard[float]:
    """A finite real number (ints included, if a float can hold them), never a bool."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool | np.bool_):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float range (10**400): not a usable number
        return False


# Makes the exception from (message, argument name): the runtime's UsageError, or a caller's own kind.
ErrorFactory = Callable[[str, str], Exception]


def integer(name: str, value: object, minimum: int = 0, note: str = "", error: ErrorFactory = UsageError) -> int:
    """`value` as an int >= minimum. `note` adds what a special value means (e.g. "0 turns it off")."""
    if not is_integer(value) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}" + (f" ({note})" if note else "") + f", got {value!r}",
                    name)
    return int(value)


def optional_integer(name: str, value: object, minimum: int, none: str, error: ErrorFactory = UsageError
                     ) -> int | None:
    """None (which means `none`, e.g. "all cores") or an int >= minimum."""
    if value is not None and (not is_integer(value) or value < minimum):
        raise error(f"{name} must be None ({none}) or an integer >= {minimum}, got {value!r}", name)
    return None if value is None else int(value)


def number(name: str, value: object, what: str = "a finite number", ok: bool = True,
           error: ErrorFactory = UsageError) -> float:
    """`value` as a float: finite, and `ok` (the caller's range test) true; `what` describes the range."""
    if not is_number(value) or not ok:
        raise error(f"{name} must be {what}, got {value!r}", name)
    return float(value)


def fits_context(tokens: int, new_tokens: int, context: int) -> None:
    """The one context check: an input of `tokens` plus `new_tokens` to generate must fit `context`."""
    if tokens + new_tokens > context:
        asked = f" + {new_tokens} new tokens" if new_tokens else ""
        raise ContextOverflow(f"input of {tokens} tokens{asked} exceeds the context of {context} tokens: shorten "
                              "the input (or the history) or ask for fewer new tokens")
