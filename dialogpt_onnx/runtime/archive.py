"""The project's archives: NumPy .npz files (no pickles) with a JSON `meta` (format, the model's identity,
a sha256 of the arrays) beside numbered arrays, written atomically. Saved chats (runtime.saved_chat) and
the server's persisted prefix cache are archives; `model_identity` is what their KV is valid for."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .errors import UsageError
from .manifest import Manifest


def model_identity(manifest: Manifest) -> str:
    """The sha256 of the manifest's file hashes: what a saved KV cache is valid for."""
    files = manifest.raw.get("files") or {}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def digest(*arrays: np.ndarray) -> str:
    """The sha256 of the arrays' bytes, in order: an archive's checksum."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def is_archive_of(path: Path, fmt: str) -> bool:
    """`path` is a .npz archive this project wrote in format `fmt` (its `meta` says so)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "meta" in z.files and json.loads(str(z["meta"]))["format"] == fmt
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False


def write_archive(path: Path, fmt: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], what: str) -> None:
    """Write a .npz archive atomically (a temporary file beside `path`, renamed over it), readable by its owner
    only (it holds conversations). An existing file is replaced only if it is an archive of the same format:
    never a file this project did not write. `what` names it in errors ("the chat")."""
    if path.is_dir() or (path.exists() and not is_archive_of(path, fmt)):
        raise UsageError(f"{path} exists and is not {what} this project saved: choose another file name")
    if not path.parent.is_dir():
        raise UsageError(f"cannot save {what} to {path}: its directory does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            members: dict[str, Any] = {"meta": np.array(json.dumps({"format": fmt, **meta})), **arrays}
            np.savez(f, **members)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MAX_META_BYTES = 16 << 20  # an archive's JSON meta (a prefix cache's replies included)
MAX_MEMBERS = 4096


@dataclass(frozen=True)
class Bounds:
    """What an archive may hold, checked from its zip directory and .npy headers before anything is
    inflated: `max_bytes` of arrays in all, and each array as `check(name, shape, dtype)` allows (it
    returns what is wrong, or None)."""

    max_bytes: int
    check: Callable[[str, tuple[int, ...], np.dtype], str | None]


def private_file(path: Path, what: str, fix: str) -> None:
    """Refuse (UsageError) a file that someone other than this user (or root) owns or may write: whoever
    can write an archive decides the chat it restores."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid not in (os.getuid(), 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"{path} ({what}) is a symlink, or owned by or writable by another user: {fix}")


def read_archive(path: Path, fmt: str, what: str, bounds: Bounds) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An archive's meta and arrays, or a one-line UsageError if `path` is not a readable archive of format
    `fmt` within `bounds`. Sizes, shapes and types are checked from the headers first, so a small file that
    declares (or inflates to) more than the model can hold costs neither its memory nor its time. `what`
    names it in errors ("a saved chat")."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > bounds.max_bytes + MAX_META_BYTES + \
                    1024 * len(infos):
                raise _Refused("it holds more than this model's largest chat")
            members = {i.filename.removesuffix(".npy"): i for i in infos}
            if "meta" not in members or len(members) != len(infos):
                raise _Refused("it has no meta, or names an array twice")
            meta_raw = _member(z, members.pop("meta"), lambda s, d: None if s == () and d.kind == "U" and
                               d.itemsize <= MAX_META_BYTES else "its meta is not one short text")
            meta = json.loads(str(meta_raw))
            if not isinstance(meta, dict) or meta.get("format") != fmt:
                raise UsageError(f"{path} is not {what} of this version ({fmt})")
            arrays = {name: _member(z, info, _check_of(bounds, name)) for name, info in members.items()}
    except _Refused as e:
        raise UsageError(f"{path} is not {what} this model can hold ({e})") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, RecursionError, NotImplementedError):
        raise UsageError(f"{path} is not readable as {what} (damaged or another kind of file)") from None
    return meta, arrays


def _check_of(bounds: Bounds, name: str) -> Callable[[tuple[int, ...], np.dtype], str | None]:
    return lambda shape, dtype: bounds.check(name, shape, dtype)


class _Refused(Exception):
    """An archive whose headers declare what its bounds do not allow."""


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, check: Callable[[tuple[int, ...], np.dtype], str | None]
            ) -> np.ndarray:
    """One .npy member: its header read and checked, then exactly the bytes it declares (never more)."""
    with z.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject or fortran:
            raise _Refused(f"{info.filename} is not a plain array")
        problem = check(tuple(shape), dtype)
        if problem:
            raise _Refused(problem)
        n = math.prod(shape) * dtype.itemsize
        if n > info.file_size:
            raise _Refused(f"{info.filename} declares more bytes than it holds")
        data = bytearray(n)
        if cast(io.BufferedIOBase, f).readinto(data) != n:  # a ZipExtFile: never inflates past n
            raise EOFError
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def numbered(arrays: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, ...]:
    """An archive's arrays `prefix`0, `prefix`1, ... in order (a KV cache's layers: "kv_")."""
    return tuple(arrays[f"{prefix}{i}"] for i in range(sum(name.startswith(prefix) for name in arrays)))
