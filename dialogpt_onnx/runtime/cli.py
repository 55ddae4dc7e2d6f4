"""What the CLIs share: usage errors as one line with exit 2, checked number types, and one mapping from
what a command raised to its exit code."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from .errors import CommandFailure, Signalled, UsageError


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

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        """argparse's, with the closest known flag beside each unknown one (--tmperature: --temperature);
        argparse's own suggest_on_error is Python 3.14+ and covers choices, not flags."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            known = [o for p in self._chosen(parsed) for a in p._actions for o in a.option_strings]
            near = {x: difflib.get_close_matches(x.split("=")[0], known, n=1, cutoff=0.6) for x in extras
                    if x.startswith("--")}
            hints = ", ".join(f"{m[0]} for {x.split('=')[0]}" if len(near) > 1 else m[0] for x, m in near.items() if m)
            self._chosen(parsed)[-1].error(f"unrecognized arguments: {' '.join(extras)}"
                                           + (f" (did you mean {hints}?)" if hints else ""))
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> list[argparse.ArgumentParser]:
        """This parser and the subcommand's parser it chose."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = [a.choices.get(getattr(parsed, a.dest, None)) for a in subs]  # type: ignore[union-attr, arg-type]
        return [self, *[p for p in chosen if p is not None]]


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


# the optional extra that brings each third-party package a command may import (pyproject.toml's extras)
EXTRAS = {"torch": "export", "transformers": "export", "optimum": "export", "onnx": "export", "onnx_ir": "export",
          "safetensors": "export", "tqdm": "export", "starlette": "serve", "uvicorn": "serve",
          "prometheus_client": "serve", "ray": "ray", "chitchat_dataset": "train", "matplotlib": "bench",
          "ctranslate2": "bench", "sacrebleu": "bench", "llama_cpp": "llama", "gguf": "llama"}


@contextlib.contextmanager
def loading(what: str, after: float = 1.0) -> Iterator[None]:
    """A load that takes over `after` seconds says so on a terminal's stderr, and how long it took; piped
    stderr stays as it was (a piped chat's stderr holds its error lines only)."""
    if not sys.stderr.isatty():
        yield
        return
    t0 = time.perf_counter()
    shown = threading.Event()

    def say() -> None:
        shown.set()
        print(f"loading {what} ...", end="", file=sys.stderr, flush=True)

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line fix for an import that failed because an optional extra is not installed, else None."""
    top = (error.name or "").split(".")[0]
    if top == "benchmarks":
        return ("the benchmark suite is a tool of the repository, not of the installed package: run it from a "
                "clone (pip install -e '.[bench]', then dialogpt-onnx bench)")
    extra = EXTRAS.get(top)
    return f"this command needs {top}: pip install 'dialogpt-onnx[{extra}]'" if extra else None


def require_extra(extra: str, *modules: str) -> None:
    """Before a command starts work: a UsageError naming `pip install 'dialogpt-onnx[extra]'` when one of the
    extra's packages is not installed (rather than failing halfway, after its progress bar started)."""
    import importlib.util

    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"this command needs {name}: pip install 'dialogpt-onnx[{extra}]'")


def run_command(command: Callable[[], int | None], *, on_interrupt: str = "") -> int:
    """Run a CLI command and turn its outcome into the exit code, the same for every command: 0 done (or
    the code it returned), 2 a user error or a missing extra (one line on stderr), a CommandFailure's own
    code (one line), 128 + N ended by signal N (130 Ctrl-C; `on_interrupt` says what was kept), 3 a bug
    (its trace shown). Only UsageError and OS errors (a path, a permission) are the user's: any other
    exception, ValueError included, is a bug."""
    try:
        return int(command() or 0)
    except CommandFailure as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_code
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None:
            return _bug()
        print(f"error: {fix}", file=sys.stderr)
        return 2
    except OSError as e:
        if isinstance(e, BrokenPipeError):  # the reader went away (e.g. `| head -1`): nothing left to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        print(f"error: {e.strerror or e} ({e.filename or 'I/O'}): check the path and its permissions",
              file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Signalled) as e:
        signum = e.signum if isinstance(e, Signalled) else int(signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}: {on_interrupt}" if on_interrupt else "",
              file=sys.stderr)
        return 128 + signum
    except Exception:  # a bug, not a user error
        return _bug()


def _bug() -> int:
    traceback.print_exc()
    print("internal error (a bug in dialogpt-onnx): please report it with the trace above", file=sys.stderr)
    return 3
