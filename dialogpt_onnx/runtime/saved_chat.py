"""A chat saved to a file and restored: its turns, its options and its KV cache, tied to the model.

The file is a NumPy .npz archive (no pickles): `meta` (JSON: format, the model's identity, the chat's options
and history budget, a sha256 of the arrays), `tokens` and `turn_lengths` (the history), and the cached rows'
KV (`kv_0` ... `kv_{2L-1}`, [n_head, cached tokens, head_dim] float32) when the chat holds a cache. Restoring
skips prefilling the history: the next turn computes only its own tokens, as the uninterrupted chat would.
A file saved from another model (another manifest) or damaged is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .archive import Bounds, digest, model_identity, numbered, private_file, read_archive, write_archive
from .checks import is_integer, is_number
from .errors import UsageError
from .manifest import Manifest
from .sampling import SamplingOptions

FORMAT = "dialogpt-onnx chat 1"


@dataclass(frozen=True)
class SavedChat:
    turns: list[list[int]]
    cached: int  # tokens of the flattened turns the KV holds (0: none saved)
    kv: tuple[np.ndarray, ...]
    options: dict[str, Any]
    max_history_tokens: int


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


def bounds(manifest: Manifest) -> Bounds:
    """What a saved chat of this model can hold: its context's tokens, and their KV in every layer."""
    s = manifest.shape
    kv = (s.n_head, s.head_dim)

    def check(name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if name in ("tokens", "turn_lengths"):
            ok = dtype == np.int32 and len(shape) == 1 and shape[0] <= s.n_positions
        else:
            ok = name.startswith("kv_") and name[3:].isdigit() and int(name[3:]) < 2 * s.n_layer and \
                dtype == np.float32 and len(shape) == 3 and (shape[0], shape[2]) == kv and shape[1] <= s.n_positions
        return None if ok else f"{name} {dtype}{list(shape)} is not an array a chat of this model holds"

    return Bounds(2 * s.n_layer * s.n_head * s.n_positions * s.head_dim * 4 + 2 * s.n_positions * 4, check)


def read(path: str | Path, manifest: Manifest) -> SavedChat:
    """The saved chat at `path`, checked against this model and its own checksum (UsageError otherwise):
    bounded before it is inflated, and its metadata as strictly as a request (runtime.saved_chat.options)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no saved chat at {path}: save one with chat.save(PATH) (or /save in the CLI)")
    private_file(path, "a saved chat", "restore only a chat you saved (or copy it to a file of your own)")
    try:
        meta, arrays = read_archive(path, FORMAT, "a saved chat", bounds(manifest))
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
    cached = meta.get("cached")
    want = (shape.n_head, cached, shape.head_dim)
    if not is_integer(cached) or int(lengths.sum()) != len(flat) or (lengths < 0).any() or \
            not 0 <= cached <= len(flat) or any(not 0 <= t < shape.vocab_size for t in flat) or (
            cached and (len(kv) != 2 * shape.n_layer or any(a.shape != want for a in kv))):
        raise UsageError(f"{path} does not hold a consistent chat of this model: save the chat again")
    budget = meta.get("max_history_tokens")
    if not is_integer(budget) or budget < 1:
        raise UsageError(f"{path}: max_history_tokens must be an integer >= 1, got {str(budget)[:40]}: save the "
                         "chat again")
    turns, at = [], 0
    for n in lengths.tolist():
        turns.append(flat[at:at + n])
        at += n
    return SavedChat(turns, int(cached), kv if cached else (), options(meta.get("options"), path), int(budget))


def options(raw: object, path: Path) -> dict[str, Any]:
    """A saved chat's options, checked as strictly as a request's: each a SamplingOptions field, of its type
    and range (the one-line error names the field)."""
    names = {f.name for f in fields(SamplingOptions)}
    if not isinstance(raw, dict) or not set(raw) <= names:
        raise UsageError(f"{path}: its options are not the generation options' names: save the chat again")
    opts = dict(raw)
    bias, stop = opts.get("logit_bias", []), opts.get("stop", [])
    if not isinstance(bias, list) or not all(isinstance(p, list) and len(p) == 2 and is_integer(p[0]) and
                                             is_number(p[1]) for p in bias):
        raise UsageError(f"{path}: logit_bias must be [token id, bias] pairs: save the chat again", "logit_bias")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise UsageError(f"{path}: stop must be a list of strings: save the chat again", "stop")
    opts["logit_bias"], opts["stop"] = {int(k): float(v) for k, v in bias}, tuple(stop)
    try:
        SamplingOptions(**opts).validate()
    except UsageError as e:
        raise UsageError(f"{path}: {e}: save the chat again", e.arg) from None
    return opts
