"""This machine's copy of a model with its weights pre-packed, memory-mapped at every later load.

onnxruntime re-arranges a model's weights into its kernels' layouts (pre-packing) at every session start,
into the process's own memory. At the first load on a machine the runtime has onnxruntime save that result
(the optimized graph, and the pre-packed weights in a data file beside it); later loads map the data file:
they skip the packing, and processes running one model share its pages instead of holding a copy each
(DialoGPT-small int8, 4 processes: 444 MB together instead of 942; docs/footprint.md). The layouts belong to
the CPU's instruction set and the onnxruntime version, so an entry is keyed by them and by the model file's
sha256, and is never shipped with a model.

Where: $DIALOGPT_ONNX_CACHE, else $XDG_CACHE_HOME/dialogpt-onnx, else ~/.cache/dialogpt-onnx; "off" turns it
off. Size: at most $DIALOGPT_ONNX_CACHE_MB (default 4096); writing an entry evicts the least recently used
ones past it, an entry larger than the cap is not kept, and each entry written is announced in one line
with the cache's total on a terminal's stderr (`dialogpt-onnx cache` lists and clears it). Every entry is
a directory of its own, written under a temporary name and renamed into place once complete; an entry
whose files are not the sizes recorded is rebuilt. A cache that cannot be written is skipped
(the model loads as it would without).

Trust: whoever can write an entry decides every reply of the model it serves, so an entry is used only when
nobody but this user could have written it, as ssh treats its keys: the cache's directory (symlinks
resolved), the entry's directory and each of its files must be owned by this user (or by root) and not
writable by group or others, and nothing inside the cache is a symlink. Entries are written private (0700
directories, 0600 files). With verify=True the entry's files are also hashed against the sha256 that this
user's own load recorded in the entry (entry.json), which no one else can have written for the same reason;
a mismatch is rebuilt. A cache that fails the checks is not used, with one warning line naming the fix.
A shared read-only cache baked into an image by root (owned by root, not writable by others) is used as
it is; nothing is written into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import onnxruntime as ort

GRAPH = "model.onnx"
DATA = "model.onnx.data"
RECORD = "entry.json"  # its mtime: the entry's last use (least recently used goes first)
# An entry is ~1-2x its model (pre-packed int8 weights are wider; medium fp32 2.7 GB, large fp32 5.8 GB, measured
# 2026-12-03): 4 GB holds the small and medium int8/int4 entries and medium fp32, and no large fp32 unasked.
DEFAULT_CAP_MB = 4096
STALE_BUILD_S = 3600  # a .building- dir this old was left by a load that died


def cache_root() -> Path | None:
    setting = os.environ.get("DIALOGPT_ONNX_CACHE", "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dialogpt-onnx"


def cap_bytes() -> int:
    """The cache's size cap: $DIALOGPT_ONNX_CACHE_MB (a number of MB >= 0), else DEFAULT_CAP_MB."""
    setting = os.environ.get("DIALOGPT_ONNX_CACHE_MB", "")
    try:
        mb = float(setting) if setting else DEFAULT_CAP_MB
        if not mb >= 0:
            raise ValueError
    except ValueError:
        warn(f"DIALOGPT_ONNX_CACHE_MB={setting!r} is not a number of MB >= 0: using {DEFAULT_CAP_MB}")
        mb = DEFAULT_CAP_MB
    return int(mb * 1e6)


def cpu_signature() -> str:
    """What decides the pre-packed layouts: the CPU's model and instruction-set flags."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
        lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return " ".join(v.strip() for k, v in lines.items() if k.strip() in ("model name", "flags"))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def entry_dir(root: Path, model_sha256: str, optimization: str, batched: bool = False) -> Path:
    """batched: the graph with GQA's query_seqlens added at load (runtime.batched_graph), another graph."""
    key = "|".join((model_sha256, ort.__version__, optimization, cpu_signature(), *(["batched"] * batched)))
    return root / hashlib.sha256(key.encode()).hexdigest()[:32]


_warned: set[str] = set()


def warn(problem: str) -> None:
    """One line per problem per process: the cache is skipped, the model loads as without it."""
    if problem not in _warned:
        _warned.add(problem)
        print(f"warning: weight cache not used: {problem}", file=sys.stderr, flush=True)


def _private(st: os.stat_result) -> bool:
    """Written only by this user (or root): owned by one of them, not writable by group or others."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trusted_root(root: Path) -> Path | None:
    """The cache directory, symlinks resolved, when nobody but this user could have written it (or it does
    not exist yet); None, with a warning, when someone else could have."""
    real = root.resolve()
    try:
        st = real.stat()
    except FileNotFoundError:
        return real
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not _private(st):
        warn(f"{real} is {'not a directory' if not stat.S_ISDIR(st.st_mode) else 'writable by other users'}: "
              f"make it yours alone (chmod 700 {real}) or point DIALOGPT_ONNX_CACHE at a private directory")
        return None
    return real


def cached_graph(entry: Path, verify: bool = False) -> Path | None:
    """The entry's graph when its files are complete (the sizes it recorded) and, with verify, their sha256
    is the one recorded; else None (built again). An entry someone else could have written is refused with a
    warning: `Untrusted`."""
    try:
        st = entry.lstat()
    except OSError:
        return None
    try:
        names = sorted(os.listdir(entry)) if stat.S_ISDIR(st.st_mode) else []
        stats = {n: (entry / n).lstat() for n in names}
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not _private(st) or not all(
            stat.S_ISREG(s.st_mode) and _private(s) for s in stats.values()):
        raise Untrusted(f"{entry} (or a file in it) is a symlink, or writable by or owned by another user: "
                        f"remove it, or point DIALOGPT_ONNX_CACHE at a private directory")
    try:
        record = json.loads((entry / RECORD).read_text())
        sizes, digests = record["sizes"], record.get("sha256", {})
        if set(sizes) | {RECORD} != set(names) or any(stats[n].st_size != size for n, size in sizes.items()):
            return None
        if verify and (set(digests) != set(sizes) or any(_sha256(entry / n) != d for n, d in digests.items())):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return entry / GRAPH


class Untrusted(Exception):
    """A cache entry someone other than this user could have written."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def saving_options(so: ort.SessionOptions, root: Path) -> Path | None:
    """Make the session about to be built write a new entry into a temporary dir under `root` (returned), or
    None when the cache cannot be written."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))  # 0700
    except OSError:
        return None
    so.optimized_model_filepath = str(tmp / GRAPH)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA)
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return tmp


def publish(tmp: Path, entry: Path, source: Path) -> None:
    """Record the sizes and digests, make the files private, and rename the temporary dir into place;
    another process that got there first wins. Past the cap, the least recently used entries go; an entry
    over the cap by itself is not kept. Says in one line what it kept."""
    try:
        files = [p for p in tmp.iterdir()]
        if GRAPH not in {p.name for p in files}:  # nothing saved (a graph onnxruntime cannot serialize): no entry
            raise OSError("no graph saved")
        size, cap = sum(p.stat().st_size for p in files), cap_bytes()
        if size > cap:
            note(f"not kept: the pre-packed copy of {source} ({size / 1e6:.0f} MB) is over the cache's cap "
                 f"({cap / 1e6:.0f} MB: raise DIALOGPT_ONNX_CACHE_MB to keep it); this load packs its own")
            raise OSError("over the cap")
        for p in files:
            p.chmod(0o600)
        sizes = {p.name: p.stat().st_size for p in files}
        digests = {p.name: _sha256(p) for p in files}
        record = tmp / RECORD
        record.write_text(json.dumps({"source": str(Path(source).absolute()), "onnxruntime": ort.__version__,
                                      "sizes": sizes, "sha256": digests}))
        record.chmod(0o600)
        try:
            if cached_graph(entry, verify=True) is not None:  # another process published it meanwhile
                raise OSError("entry exists")
        except Untrusted:
            raise OSError("an untrusted entry is in the way") from None
        if entry.exists():
            shutil.rmtree(entry)  # an incomplete or damaged entry of this user's (cached_graph refused it)
        tmp.rename(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    gone, held = evict(entry.parent, cap, keep=entry)
    freed = f"; removed {len(gone)} least recently used ({sum(e.bytes for e in gone) / 1e6:.0f} MB)" if gone else ""
    note(f"kept a pre-packed copy of {source} ({size / 1e6:.0f} MB) in {entry.parent}{freed}; the cache holds "
         f"{held / 1e6:.0f} of {cap / 1e6:.0f} MB (`dialogpt-onnx cache` lists and clears it)")


def note(text: str) -> None:
    """A line for the person at the terminal; piped and captured stderr (servers, tests, scripts) stay as
    they were."""
    if sys.stderr.isatty():
        print(f"weight cache: {text}", file=sys.stderr, flush=True)


class Entry(NamedTuple):
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch
    source: str
    onnxruntime: str


def entries(root: Path) -> list[Entry]:
    """The cache's complete entries that this user wrote, least recently used first. Anything else in the
    directory (another user's, a symlink, a file) is not an entry and is never touched."""
    found = []
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    for d in children:
        try:
            if d.name.startswith(".") or cached_graph(d) is None:
                continue
            record = json.loads((d / RECORD).read_text())
            found.append(Entry(d, sum(record["sizes"].values()), (d / RECORD).stat().st_mtime,
                               str(record.get("source", "?")), str(record.get("onnxruntime", "?"))))
        except (Untrusted, OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(found, key=lambda e: e.last_used)


def touch(entry: Path) -> None:
    """Mark an entry used now."""
    with contextlib.suppress(OSError):
        os.utime(entry / RECORD)


def evict(root: Path, cap: int, keep: Path | None = None) -> tuple[list[Entry], int]:
    """Remove least recently used entries (never `keep`) until the cache holds at most `cap` bytes, and the
    temporary dirs of loads that died; the removed entries and the bytes the cache holds after."""
    now = time.time()
    for d in root.glob(".building-*"):
        with contextlib.suppress(OSError):
            if now - d.lstat().st_mtime > STALE_BUILD_S and _private(d.lstat()) and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
    held, gone = entries(root), []
    total = sum(e.bytes for e in held)
    for e in held:
        if total <= cap:
            break
        if e.path == keep:
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        total -= e.bytes
        gone.append(e)
    return gone, total
