"""The project's archives: NumPy .npz files (no pickles) with a JSON `meta` (format, the model's identity,
a sha256 of the arrays) beside numbered arrays, written atomically. Saved chats (runtime.saved_chat) and
the server's persisted prefix cache are archives; `model_identity` is what their KV is valid for."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

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


def read_archive(path: Path, fmt: str, what: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An archive's meta and arrays (read into memory), or a one-line UsageError if `path` is not a readable
    archive of format `fmt`. `what` names it in errors ("a saved chat")."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in z.files if name != "meta"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError):
        raise UsageError(f"{path} is not readable as {what} (damaged or another kind of file)") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise UsageError(f"{path} is not {what} of this version ({fmt})")
    return meta, arrays


def numbered(arrays: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, ...]:
    """An archive's arrays `prefix`0, `prefix`1, ... in order (a KV cache's layers: "kv_")."""
    return tuple(arrays[f"{prefix}{i}"] for i in range(sum(name.startswith(prefix) for name in arrays)))
