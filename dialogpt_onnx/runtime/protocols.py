"""What the decode loop, scoring, chat and the serving engine need from a loaded graph, as protocols below
their implementations (contrib_graph, portable_graph; runtime.graph proves both conform and picks one).

A `Graph` is shared and read-only; every caller owns a `Cache`: the KV rows of its batch and the calls
that extend them (prefill, step). `RowCache` adds what a batching engine does to single rows (free,
move, save, load); only the contrib graph's in-place buffer offers it. `RowKV` is one row's saved KV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .manifest import Manifest


@dataclass(frozen=True)
class RowKV:
    """A copy of one row's cached tokens and their KV, [n_head, len(tokens), head_dim] per layer and K/V."""

    tokens: tuple[int, ...]
    kv: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.kv)


class Cache(Protocol):
    m: Manifest
    batch: int
    max_length: int
    lengths: np.ndarray  # tokens cached per row
    last_all_logits: np.ndarray | None  # every position's logits of the last prefill (all-logits graphs)

    @property
    def nbytes(self) -> int: ...
    def reset(self, batch: int = 1, reserve: int = 0) -> None: ...
    def release(self) -> None: ...
    def fork(self, n: int, reserve: int = 0) -> Cache: ...
    def prefill(self, rows: list[list[int]], start: int = 0) -> np.ndarray: ...
    def step(self, tokens: np.ndarray, active: np.ndarray | None = None) -> np.ndarray: ...


class RowCache(Cache, Protocol):
    def free_row(self, b: int) -> None: ...
    def move_row(self, src: int, dst: int) -> None: ...
    def save_row(self, b: int, tokens: list[int]) -> RowKV: ...
    def load_row(self, b: int, saved: RowKV, n: int) -> None: ...


class Graph(Protocol):
    m: Manifest
    max_length: int

    def new_cache(self) -> Cache: ...
