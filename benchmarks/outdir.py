"""Where a benchmark may write its report, and the writing: a directory that is absent, empty, or holds a
previous report of these benchmarks (marked by MARKER) — never a user's own files, the rule the exporter
follows."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

MARKER = ".dialogpt-onnx-report"


class OutDirError(ValueError):
    """--out names a place a report must not be written to."""


def prepare_out(out: Path) -> Path:
    """Check --out, create it and mark it as a report dir; raises OutDirError with the fix."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} is a file: give a directory for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise OutDirError(f"--out {out} holds files no benchmark wrote: choose an absent or empty directory "
                          "(or a previous report's)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a dialogpt-onnx benchmark report: its files may be replaced by the next run\n")
    return out


def report_dir(parser: argparse.ArgumentParser, out: str) -> Path:
    """prepare_out for a CLI: a refusal is the parser's one-line error (exit 2), before any work starts."""
    try:
        return prepare_out(Path(out))
    except OutDirError as e:
        parser.error(str(e))


def write_results(out: Path, run: dict, report: Callable[[dict, Path], None],
                  plot: Callable[[dict, Path], None], note: str = "") -> None:
    """results.json, then the report and the plot made from it, and one line saying where they are."""
    (out / "results.json").write_text(json.dumps(run, indent=1))
    report(run, out)
    plot(run, out)
    print(f"wrote {out / 'report.md'}{note}")
