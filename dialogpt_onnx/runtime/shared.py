"""What several models of one export share in a process: built once per file and settings, kept while any
model holds it. Keyed by the file's identity, so a file replaced since (a new export) gets its own."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Shared(Generic[T]):
    """A value held by every model that uses it (onnxruntime and tokenizers objects cannot be weakly
    referenced themselves)."""

    def __init__(self, value: T) -> None:
        self.value = value


_HELD: weakref.WeakValueDictionary[tuple, Shared] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def shared(path: Path, build: Callable[[], T], *settings: Hashable) -> Shared[T]:
    """The value built from `path` under `settings`, built by `build()` once while any holder keeps it."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, *settings)
    with _LOCK:
        held = _HELD.get(key)
        if held is None:
            held = Shared(build())
            _HELD[key] = held
    return held
