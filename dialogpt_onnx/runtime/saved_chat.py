"""A chat saved to a file and restored: its turns, its options and its KV cache, tied to the model.

The file is a NumPy .npz archive (no pickles): `meta` (JSON: format, the model's identity, the chat's options
and history budget, a sha256 of the arrays), `tokens` and `turn_lengths` (the history), and the cached rows'
KV (`kv_0` ... `kv_{2L-1}`, [n_head, cached tokens, head_dim] float32) when the chat holds a cache. Restoring
skips prefilling the history: the next turn computes only its own tokens, as the uninterrupted chat would.
A file saved from another model (another manifest) or damaged is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .manifest import Manifest

FORMAT = "dialogpt-onnx chat 1"


def model_identity(manifest: Manifest) -> str:
    """The sha256 of the manifest's file hashes: what a saved KV cache is valid for."""
    files = manifest.raw.get("files") or {}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SavedChat:
    turns: list[list[int]]
    cached: int  # tokens of the flattened turns the KV holds (0: none saved)
    kv: tuple[np.ndarray, ...]
    options: dict[str, Any]
    max_history_tokens: int


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


def write(path: str | Path, manifest: Manifest, chat: SavedChat) -> None:
    """Save `chat` to `path` (see write_archive)."""
    tokens = np.array([t for turn in chat.turns for t in turn], dtype=np.int32)
    lengths = np.array([len(turn) for turn in chat.turns], dtype=np.int32)
    options = {**chat.options, "logit_bias": [[int(k), float(v)] for k, v in chat.options["logit_bias"].items()],
               "stop": list(chat.options["stop"])}
    meta = {"model": model_identity(manifest), "variant": manifest.variant, "cached": chat.cached,
            "options": options, "max_history_tokens": chat.max_history_tokens,
            "sha256": digest(tokens, lengths, *chat.kv)}
    write_archive(Path(path), FORMAT, meta, {"tokens": tokens, "turn_lengths": lengths,
                                             **{f"kv_{i}": a for i, a in enumerate(chat.kv)}}, "a chat")


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


def read(path: str | Path, manifest: Manifest) -> SavedChat:
    """The saved chat at `path`, checked against this model and its own checksum (UsageError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no saved chat at {path}: save one with chat.save(PATH) (or /save in the CLI)")
    try:
        meta, arrays = read_archive(path, FORMAT, "a saved chat")
        tokens, lengths = arrays["tokens"], arrays["turn_lengths"]
        kv = numbered(arrays, "kv_")
    except UsageError as e:
        raise UsageError(f"{e}: save the chat again") from None
    except KeyError:
        raise UsageError(f"{path} does not hold a consistent chat: save the chat again") from None
    if meta.get("model") != model_identity(manifest):
        raise UsageError(f"{path} was saved from another model (its KV cache is valid for that model only): "
                         "restore it into the model it was saved with")
    if meta.get("sha256") != digest(tokens, lengths, *kv):
        raise UsageError(f"{path} is damaged (its checksum does not match): save the chat again")
    shape = manifest.shape
    flat = tokens.tolist()
    cached = int(meta["cached"])
    want = (shape.n_head, cached, shape.head_dim)
    if int(lengths.sum()) != len(flat) or not 0 <= cached <= len(flat) or (
            cached and (len(kv) != 2 * shape.n_layer or any(a.shape != want for a in kv))):
        raise UsageError(f"{path} does not hold a consistent chat: save the chat again")
    turns, at = [], 0
    for n in lengths.tolist():
        turns.append(flat[at:at + n])
        at += n
    options = dict(meta["options"])
    options["logit_bias"] = {int(k): float(v) for k, v in options["logit_bias"]}
    options["stop"] = tuple(options["stop"])
    return SavedChat(turns, cached, kv if cached else (), options, int(meta["max_history_tokens"]))
