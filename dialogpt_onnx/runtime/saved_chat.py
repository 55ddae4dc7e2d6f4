"""A chat saved to a file and restored: its turns, its options and its KV cache, tied to the model.

The file is a NumPy .npz archive (no pickles): `meta` (JSON: format, the model's identity, the chat's options
and history budget, a sha256 of the arrays), `tokens` and `turn_lengths` (the history), and the cached rows'
KV (`kv_0` ... `kv_{2L-1}`, [n_head, cached tokens, head_dim] float32) when the chat holds a cache. Restoring
skips prefilling the history: the next turn computes only its own tokens, as the uninterrupted chat would.
A file saved from another model (another manifest) or damaged is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .archive import digest, model_identity, numbered, read_archive, write_archive
from .errors import UsageError
from .manifest import Manifest

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
