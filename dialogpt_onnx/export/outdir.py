"""Where an export may write, and how it lands there without ever losing a user's files.

Rules (checked before the checkpoint is loaded):
- OUT_DIR must be absent, an empty directory, or (with --overwrite) a previous export of this project:
  a directory holding its manifest.json and only the files that manifest lists.
- OUT_DIR must not be SOURCE (or the tokenizer dir, or the prompts file), lie inside it, or contain it;
  nor be a symlink or a mount point.
- Everything is written to a temporary dir beside OUT_DIR, then swapped in with one atomic rename
  (Linux renameat2 RENAME_EXCHANGE), so an old export stays intact until the new one is complete.
- SIGINT, SIGTERM and SIGHUP remove the temporary dir (the CLI turns them into `Interrupted`, see
  signals.py); the swap itself runs with them deferred.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

from dialogpt_onnx.runtime.manifest import MANIFEST

from .errors import ExportError
from .signals import deferred_signals

PARTIAL = ".partial-"


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b (both resolved)."""
    return a == b or b in a.parents


def check_out_dir(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse any OUT_DIR whose replacement could destroy something the project did not write."""
    if out.is_symlink():
        raise ExportError(f"{out} is a symlink: give the real directory as OUT_DIR")
    real = out.resolve()
    for src in inputs:
        src = src.resolve()
        if _inside(real, src) or _inside(src, real):
            what = "is" if real == src else ("lies inside" if _inside(real, src) else "contains")
            raise ExportError(f"OUT_DIR {out} {what} the input {src}: choose an OUT_DIR apart from the checkpoint")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory: choose another OUT_DIR")
    if os.path.ismount(out):
        raise ExportError(f"{out} is a mount point: give a new directory inside it as OUT_DIR")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise ExportError(f"cannot read {out} ({e.strerror}): choose another OUT_DIR") from None
    if not entries:
        return  # an empty directory: nothing to lose
    if not overwrite:
        raise ExportError(f"{out} already exists: pass --overwrite to replace a previous export, or choose "
                          "another OUT_DIR")
    listed = previous_export_files(out)
    if listed is None:
        raise ExportError(f"{out} is not a previous export (no manifest.json of dialogpt-onnx): --overwrite only "
                          "replaces exports; choose another OUT_DIR")
    extra = [n for n in entries if n not in listed and n != MANIFEST]
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise ExportError(f"{out} holds files the previous export did not write ({shown}): move them away "
                          "or choose another OUT_DIR")


def previous_export_files(d: Path) -> set[str] | None:
    """The files a previous export's manifest lists, or None when `d` holds no such manifest."""
    try:
        raw = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(raw, dict) or "format_version" not in raw or not isinstance(raw.get("files"), dict):
        return None
    return set(raw["files"])


class TempDir:
    """The temporary dir beside OUT_DIR, made before anything slow runs (so an unwritable OUT_DIR fails
    at once), and removed on failure together with any parent dirs it had to create."""

    def __init__(self, out: Path) -> None:
        self.out = out
        missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
        except OSError as e:
            self._remove_parents(missing)
            raise ExportError(f"cannot write to {out.parent} ({e.strerror}): choose a writable OUT_DIR") from None
        self.created_parents = missing
        self.expected_bytes = 0
        umask = os.umask(0)
        os.umask(umask)
        self.path.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published dir gets normal permissions
        _remove_stale_partials(out)

    def expect(self, nbytes: int) -> None:
        """What the export will write (for the disk-full message)."""
        self.expected_bytes = nbytes

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._remove_parents(self.created_parents)

    @staticmethod
    def _remove_parents(parents: list[Path]) -> None:
        for p in parents:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()


def _remove_stale_partials(out: Path) -> None:
    """Temporary dirs of exports to the same OUT_DIR that were killed (SIGKILL, power loss): ours to remove."""
    for p in out.parent.glob(f".{glob.escape(out.name)}{PARTIAL}*"):
        pid = p.name[len(f".{out.name}{PARTIAL}"):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # filesystem without exchange support
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: TempDir, out: Path) -> None:
    """Move the finished dir into place. An old export is swapped out in one step and only then removed."""
    with deferred_signals():
        if out.exists() and any(out.iterdir()):
            if not _exchange(tmp.path, out):  # fallback: two renames, a brief moment with no OUT_DIR
                old = out.with_name(f".{out.name}{PARTIAL}{os.getpid()}-old")
                out.rename(old)
                tmp.path.rename(out)
                shutil.rmtree(old, ignore_errors=True)
                return
            shutil.rmtree(tmp.path, ignore_errors=True)  # now holds the previous export
        else:
            if out.exists():
                out.rmdir()  # empty
            tmp.path.rename(out)


def disk_full(e: BaseException) -> bool:
    """OSError ENOSPC/EDQUOT, or a Rust/C++ library's error text for it (tokenizers, onnx)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e) or "os error 28" in str(e)


def disk_full_error(out: Path, needed_bytes: int) -> ExportError:
    free = shutil.disk_usage(out.parent).free if out.parent.exists() else 0
    short = max(needed_bytes - free, 0) / 1e6
    return ExportError(f"disk full while writing {out}: free at least {max(short, 1):.0f} MB on {out.parent} "
                       f"(the export needs about {needed_bytes / 1e6:.0f} MB) and retry")
