"""The portable (standard-ops) graph and its cache: optimum's I/O, past and present concatenated each step.

Slower by design (a copy of the whole cache per step): it exists for engines without onnxruntime's
contrib ops and as the benchmark's baseline. Same protocols as the contrib graph (runtime.protocols.Graph /
Cache): the graph is shared and read-only, each generation or chat owns a PortableCache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checks import fits_context
from .manifest import Manifest, ModelFormat, Optimization
from .ort_graph import OrtGraph


class PortableGraph(OrtGraph):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None,
                 max_length: int | None = None, optimization: Optimization | None = None,
                 model_format: ModelFormat = "onnx", weight_cache: bool = False, verify: bool = False) -> None:
        super().__init__(model_dir, manifest, threads=threads, max_length=max_length, optimization=optimization,
                         model_format=model_format, weight_cache=weight_cache, verify=verify)
        self.out_names = [self.logits_name] + [manifest.io.kv_name("present", k, i)
                                               for i in range(manifest.shape.n_layer) for k in ("key", "value")]

    def new_cache(self) -> PortableCache:
        return PortableCache(self)


class PortableCache:
    def __init__(self, graph: PortableGraph) -> None:
        self.graph = graph
        self.m = graph.m
        self.max_length = graph.max_length
        self.batch = 0
        self.capacity = 0
        self.lengths = np.zeros(0, dtype=np.int64)
        self._past: list[np.ndarray] = []
        self.last_all_logits: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._past)

    def release(self) -> None:
        self._past, self.batch, self.capacity = [], 0, 0
        self.lengths = np.zeros(0, dtype=np.int64)

    def reset(self, batch: int = 1, reserve: int = 0) -> None:
        self.batch = batch
        self.lengths = np.zeros(batch, dtype=np.int64)
        shape = (batch, self.m.shape.n_head, 0, self.m.shape.head_dim)
        self._past = [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.m.shape.n_layer)]
        self._mask = np.zeros((batch, 0), dtype=np.int64)  # 1 where the cache holds a real token

    def fork(self, n: int, reserve: int = 0) -> PortableCache:
        """A new cache of n rows, each a copy of this one-row cache (see ContribCache.fork)."""
        if self.batch != 1:
            raise ValueError("fork() copies a one-row cache")
        out = PortableCache(self.graph)
        out.reset(n, reserve)
        out._past = [np.repeat(a, n, axis=0) for a in self._past]
        out._mask = np.repeat(self._mask, n, axis=0)
        out.lengths = np.repeat(self.lengths, n)
        out.capacity = self.capacity
        return out

    def _run(self, ids: np.ndarray, pos: np.ndarray, new_mask: np.ndarray) -> np.ndarray:
        mask = np.concatenate([self._mask, new_mask], axis=1)
        fits_context(mask.shape[1], 0, self.max_length)
        names = self.graph.names
        feeds = {names["input_ids"]: ids, names["position_ids"]: pos, names["attention_mask"]: mask}
        for i in range(self.m.shape.n_layer):
            feeds[self.m.io.kv_name("past", "key", i)] = self._past[2 * i]
            feeds[self.m.io.kv_name("past", "value", i)] = self._past[2 * i + 1]
        out = self.graph.ort_session.run(self.graph.out_names, feeds)
        self._past, self._mask = out[1:], mask
        self.capacity = mask.shape[1]
        return out[0]

    def prefill(self, rows: list[list[int]], start: int = 0) -> np.ndarray:
        """Append each row's new tokens; every row of the batch runs (start must be 0: concatenated past
        and present cannot run a subset of rows)."""
        if start != 0 or len(rows) != self.batch:
            raise ValueError(f"the portable cache runs all its {self.batch} rows at once, got rows "
                             f"{start}..{start + len(rows) - 1}")
        q = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(q.max())
        if width == 0:
            raise ValueError("nothing to prefill: every row is empty")
        ids = np.zeros((self.batch, width), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
        pos = np.minimum(self.lengths[:, None] + np.arange(width)[None], self.max_length - 1)
        new_mask = (np.arange(width)[None] < q[:, None]).astype(np.int64)
        logits = self._run(ids, pos, new_mask)
        self.last_all_logits = logits
        self.lengths = self.lengths + q
        return logits[np.arange(self.batch), np.maximum(q - 1, 0)]

    def step(self, tokens: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        act = np.ones(self.batch, dtype=np.int64) if active is None else active.astype(np.int64)
        logits = self._run(np.asarray(tokens, dtype=np.int64).reshape(self.batch, 1),
                           np.minimum(self.lengths, self.max_length - 1)[:, None], act[:, None])
        self.lengths = self.lengths + act
        return logits[:, -1]
