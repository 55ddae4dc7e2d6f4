"""What the CLIs share: usage errors as one line with exit 2, checked number types, and one mapping from
what a command raised to its exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from .errors import UsageError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dialogpt-onnx")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


VERSION = _version()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: each option's default shown, the description and the examples kept as written. Options
    without a default (None, False, an empty list) or whose help already names it show nothing more."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()



class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage before a bad-argument message; users get the message alone. Every
    command answers --version, shows its options' defaults in --help, and ends it with examples."""

    def __init__(self, *args, examples: tuple[str, ...] = (), **kwargs) -> None:
        kwargs["formatter_class"] = HelpFormatter
        if examples:
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {e}" for e in examples)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"dialogpt-onnx {VERSION}")

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(1, text)


def nonnegative_int(text: str) -> int:
    return _int_at_least(0, text)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def token_bias(text: str) -> tuple[int, float]:
    """TOKEN_ID:BIAS, as --logit-bias takes it."""
    tok, sep, bias = text.partition(":")
    if not sep or not tok.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not TOKEN_ID:BIAS (e.g. 50256:-100)")
    return int(tok), finite_float(bias)


def run_command(command: Callable[[], None]) -> int:
    """Run a CLI command and turn its outcome into the exit code: 0 done, 2 a user error (one line on
    stderr), 130 Ctrl-C, 3 a bug (its trace shown). Only UsageError and OS errors (a path, a permission) are
    the user's: any other exception, ValueError included, is a bug."""
    try:
        command()
        return 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader went away (e.g. `| head -1`): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        print(f"error: {e.strerror or e} ({e.filename or 'I/O'}): check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user error
        traceback.print_exc()
        print("internal error (a bug in dialogpt-onnx): please report it with the trace above", file=sys.stderr)
        return 3
