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


def _digest(tokens: np.ndarray, lengths: np.ndarray, kv: tuple[np.ndarray, ...]) -> str:
    h = hashlib.sha256()
    for a in (tokens, lengths, *kv):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _is_saved_chat(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "meta" in z.files and json.loads(str(z["meta"]))["format"] == FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False


def write(path: str | Path, manifest: Manifest, chat: SavedChat) -> None:
    """Write atomically (a temporary file beside `path`, renamed over it). An existing file is replaced only
    if it is a saved chat itself: never a file this project did not write."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not _is_saved_chat(path)):
        raise UsageError(f"{path} exists and is not a saved chat: choose another file name")
    if not path.parent.is_dir():
        raise UsageError(f"cannot save the chat to {path}: its directory does not exist")
    tokens = np.array([t for turn in chat.turns for t in turn], dtype=np.int32)
    lengths = np.array([len(turn) for turn in chat.turns], dtype=np.int32)
    options = {**chat.options, "logit_bias": [[int(k), float(v)] for k, v in chat.options["logit_bias"].items()],
               "stop": list(chat.options["stop"])}
    meta = {"format": FORMAT, "model": model_identity(manifest), "variant": manifest.variant, "cached": chat.cached,
            "options": options, "max_history_tokens": chat.max_history_tokens,
            "sha256": _digest(tokens, lengths, chat.kv)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta)), "tokens": tokens, "turn_lengths": lengths,
                                      **{f"kv_{i}": a for i, a in enumerate(chat.kv)}}
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | Path, manifest: Manifest) -> SavedChat:
    """The saved chat at `path`, checked against this model and its own checksum (UsageError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no saved chat at {path}: save one with chat.save(PATH) (or /save in the CLI)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tokens, lengths = z["tokens"], z["turn_lengths"]
            kv = tuple(z[f"kv_{i}"] for i in range(sum(name.startswith("kv_") for name in z.files)))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError):
        raise UsageError(f"{path} is not a readable saved chat (damaged or another kind of file): save the chat "
                         "again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"{path} is not a saved chat of this version ({FORMAT}): save the chat again")
    if meta.get("model") != model_identity(manifest):
        raise UsageError(f"{path} was saved from another model (its KV cache is valid for that model only): "
                         "restore it into the model it was saved with")
    if meta.get("sha256") != _digest(tokens, lengths, kv):
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
