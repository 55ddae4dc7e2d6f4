"""What the decode loop, scoring, chat and the serving engine need from a loaded graph, as protocols,
and the loader that picks the implementation the manifest names.

A `Graph` is shared and read-only; every caller owns a `Cache`: the KV rows of its batch and the calls
that extend them (prefill, step). `RowCache` adds what a batching engine does to single rows (free,
move, save, load); only the contrib graph's in-place buffer offers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .contrib_graph import ContribGraph, RowKV
from .manifest import Manifest
from .portable_graph import PortableGraph


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


def open_graph(model_dir: Path, manifest: Manifest, threads: int | None = None, max_length: int | None = None,
               optimization: str | None = None, model_format: str = "onnx",
               weight_cache: bool = False) -> ContribGraph | PortableGraph:
    """The graph class that fits the manifest: the fast contrib graph or the portable one. `optimization`:
    onnxruntime's graph optimization level (manifest.OPTIMIZATION_LEVELS; default: the manifest's);
    `model_format`: "onnx" (model.onnx) or "ort" (model.ort, when the export wrote one); `weight_cache`: built
    from this machine's pre-packed copy (runtime.weight_cache)."""
    cls = PortableGraph if manifest.graph == "portable" else ContribGraph
    return cls(model_dir, manifest, threads=threads, max_length=max_length, optimization=optimization,
               model_format=model_format, weight_cache=weight_cache)


def _conforms(contrib: ContribGraph, portable: PortableGraph) -> tuple[Graph, Graph, RowCache, Cache]:
    """Never called: a type checker proves here that both implementations satisfy the protocols."""
    return contrib, portable, contrib.new_cache(), portable.new_cache()
