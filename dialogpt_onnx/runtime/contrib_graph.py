"""The contrib-op graph (the fast one) and its cache: one per generation, chat or engine.

`ContribGraph` owns the onnxruntime session and keeps no per-call state, so one loaded model serves any
number of threads. Every caller owns a `ContribCache`: its KV buffers, its own IO binding and its row
lengths, and the calls that extend them (prefill, step). Nothing else writes them.

The cache is one preallocated buffer per layer and K/V ([batch, heads, capacity, head_dim]), bound as
both past and present, so GroupQueryAttention appends in place: no per-step copies. Each row keeps its
own length, so rows of a batch may hold different numbers of tokens (ragged batches: position ids
follow each row's real tokens, never padding). Capacity grows by doubling, up to the context.
The row operations (free, move, save, load) are what a batching engine needs (runtime.protocols.RowCache).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from .batched_graph import QUERY_SEQLENS, supported
from .checks import fits_context
from .ort_graph import OrtGraph
from .protocols import RowKV

MIN_CAPACITY = 64


class ContribGraph(OrtGraph):
    batched = supported()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # query_seqlens fed: several rows may append several tokens in one call (runtime.batched_graph)
        self.ragged = QUERY_SEQLENS in {i.name for i in self.ort_session.get_inputs()}

    def new_cache(self) -> ContribCache:
        return ContribCache(self)


class ContribCache:
    """One caller's KV state: buffers, IO binding and per-row lengths. Not shared between threads."""

    def __init__(self, graph: ContribGraph) -> None:
        self.graph = graph
        self.m = graph.m
        self.max_length = graph.max_length
        self.binding = graph.ort_session.io_binding()
        self.batch = 0
        self.capacity = 0
        self.lengths = np.zeros(0, dtype=np.int64)  # tokens cached per row
        self._kv: list[np.ndarray] = []
        self._reserve = 0
        self._rows_bound: tuple[int, int] | None = None  # the run of rows bound (views; see _bind_rows)
        self.last_all_logits: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the KV buffers (0 once released)."""
        return sum(a.nbytes for a in self._kv)

    def release(self) -> None:
        """Free the buffers; the next prefill allocates again (the caller must reset first)."""
        self._kv = []
        self._rows_bound = None
        self.binding = self.graph.ort_session.io_binding()
        self.capacity = 0
        self.batch = 0
        self.lengths = np.zeros(0, dtype=np.int64)

    # -- cache ---------------------------------------------------------------------------------
    def reset(self, batch: int = 1, reserve: int = 0) -> None:
        """Empty the cache for `batch` rows. Buffers are reused when the batch size is unchanged;
        otherwise they are allocated at the first prefill, at least `reserve` tokens long."""
        if batch != self.batch:
            self._kv = []
            self._rows_bound = None
            self.capacity = 0
            self.batch = batch
        self._reserve = min(reserve, self.max_length)
        self.lengths = np.zeros(batch, dtype=np.int64)

    def free_row(self, b: int) -> None:
        """Forget row b's tokens (its buffer space is reused by the next tokens fed to it)."""
        self.lengths[b] = 0
        self._step_ready = False

    def save_row(self, b: int, tokens: list[int]) -> RowKV:
        """A copy of row b's KV, stored under the tokens it holds (a serving prefix cache keeps it)."""
        held = int(self.lengths[b])
        if len(tokens) != held:
            raise ValueError(f"row {b} holds {held} tokens, not {len(tokens)}")
        return RowKV(tuple(tokens), tuple(a[b, :, :held].copy() for a in self._kv))

    def load_row(self, b: int, saved: RowKV, n: int) -> None:
        """Row b holds the first n tokens of `saved` (whatever it held before is forgotten)."""
        if not 0 < n <= len(saved.tokens):
            raise ValueError(f"cannot load {n} of the {len(saved.tokens)} saved tokens")
        self.lengths[b] = 0
        self._ensure_capacity(n)
        for dst, src in zip(self._kv, saved.kv, strict=True):
            dst[b, :, :n] = src[:, :n]
        self.lengths[b] = n
        self._step_ready = False

    def fork(self, n: int, reserve: int = 0) -> ContribCache:
        """A new cache of n rows, each holding a copy of this one-row cache's tokens (the rows then grow
        apart: N candidate replies to one history, without prefilling the history N times)."""
        if self.batch != 1:
            raise ValueError("fork() copies a one-row cache")
        held = int(self.lengths[0])
        out = ContribCache(self.graph)
        out.reset(n, reserve=max(reserve, held))
        if held:
            out._allocate(max(MIN_CAPACITY, out._reserve, held))
            for dst, src in zip(out._kv, self._kv, strict=True):
                dst[:, :, :held] = src[:1, :, :held]
            out.lengths[:] = held
        return out

    def _allocate(self, capacity: int, keep: int = 0) -> None:
        shape = (self.batch, self.m.shape.n_head, capacity, self.m.shape.head_dim)
        old = self._kv
        self._kv = [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.m.shape.n_layer)]
        if keep:
            for new, prev in zip(self._kv, old, strict=True):
                new[:, :, :keep] = prev[:, :, :keep]
        self.capacity = capacity
        if not self.m.all_logits:  # [batch, 1, vocab]: one buffer serves every call (bound by _bind_rows)
            self._logits = np.empty((self.batch, 1, self.m.shape.vocab_size), dtype=np.float32)
        # the attention mask spans the buffer: its width is GQA's total_sequence_length (an upper bound is all
        # it needs), each row's ones its filled slots (set per call by _set_mask)
        self._mask = np.zeros((self.batch, capacity), dtype=np.int64)
        self._slots = np.arange(capacity)
        self._rows_bound = None  # the new buffers: bind them
        self._bind_rows(0, self.batch)
        if self.m.all_logits:  # [batch, seq, vocab] varies per call: let onnxruntime allocate it
            self.binding.bind_output(self.graph.logits_name, "cpu")
            self._logits_slot = 2 * self.m.shape.n_layer  # outputs come back in binding order: KV first
        self._step_ready = False

    def _ensure_capacity(self, needed: int, padded: int | None = None) -> None:
        """Room for `needed` real tokens in the longest row (at most the context) and for `padded` slots:
        GroupQueryAttention writes every row's padded chunk after that row's cached tokens, so a ragged
        call needs max(cached) + chunk width, which may pass the context by up to the chunk width."""
        fits_context(needed, 0, self.max_length)
        padded = max(needed, padded or 0)
        if padded > self.capacity:
            cap = max(self.capacity, MIN_CAPACITY, self._reserve)
            while cap < padded:
                cap *= 2
            cap = min(cap, max(self.max_length, padded))
            self._allocate(cap, keep=int(self.lengths.max(initial=0)))

    # -- forward -------------------------------------------------------------------------------
    def prefill(self, rows: list[list[int]], start: int = 0) -> np.ndarray:
        """Append each row's new tokens (a row may be empty: its KV is left as it is) to cache rows
        start, start + 1, ... and return the last real token's logits per row, [len(rows), vocab]. Rows
        are right-padded to the longest (the padding is cached past each row's length, never attended, and
        overwritten by its next tokens). Rows outside that range are
        neither computed nor touched (the engine runs its busy rows only, and a long prompt apart)."""
        k = len(rows)
        if not (0 <= start and 0 < k and start + k <= self.batch):
            raise ValueError(f"got rows {start}..{start + k - 1} for a cache of batch {self.batch}")
        q = np.array([len(r) for r in rows], dtype=np.int32)
        width = int(q.max())
        if width == 0:
            raise ValueError("nothing to prefill: every row is empty")
        if k > 1 and width > 1 and not self.graph.ragged:  # GQA without query_seqlens: one row per call
            return self._prefill_row_by_row(rows, start)
        lengths = self.lengths[start:start + k].copy()
        # GroupQueryAttention writes each row's padded chunk after its cached tokens; with query_seqlens it
        # caches only the real ones, and counts a row fed nothing as holding at least one. Without it, the
        # padding lands past the row's length, where its next tokens overwrite it, and is never attended.
        self._ensure_capacity(int((lengths + q).max()), int(np.maximum(lengths, 1).max()) + width)
        self._bind_rows(start, start + k)
        ids = np.zeros((k, width), dtype=np.int64)
        pos = np.full((k, width), -1, dtype=np.int64)  # -1: padding (the graph picks each row's last real token)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = r
            pos[b, : len(r)] = lengths[b] + np.arange(len(r))
        total = lengths + q
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "position_ids": pos}
        if self.graph.ragged:
            self._set_mask(start, np.where(q > 0, total - 1, np.maximum(lengths - 1, 0)))
            feeds[QUERY_SEQLENS] = q
        else:
            self._set_mask(start, lengths + width - 1)
        self._run(feeds)
        self.lengths[start:start + k] = total
        self._step_ready = False
        if self.m.all_logits:
            self.last_all_logits = self.binding.get_outputs()[self._logits_slot].numpy()
            return self.last_all_logits[np.arange(k), np.maximum(q - 1, 0)]
        return self._logits[start:start + k, 0]

    def _prefill_row_by_row(self, rows: list[list[int]], start: int) -> np.ndarray:
        out = np.zeros((len(rows), self.m.shape.vocab_size), dtype=np.float32)
        for b, r in enumerate(rows):
            if r:
                out[b] = self.prefill([r], start + b)
        return out

    def move_row(self, src: int, dst: int) -> None:
        """Row dst takes row src's tokens (src is emptied): the engine packs busy rows to the front."""
        held = int(self.lengths[src])
        for a in self._kv:
            a[dst, :, :held] = a[src, :, :held]
        self.lengths[dst], self.lengths[src] = held, 0
        self._step_ready = False

    def _bind_rows(self, start: int, stop: int) -> None:
        """Bind rows start..stop-1 of every buffer (views: batch is the outer axis, so any run of rows is
        contiguous)."""
        if (start, stop) == self._rows_bound:
            return
        b, io = self.binding, self.m.io
        for i in range(self.m.shape.n_layer):
            for j, kind in enumerate(("key", "value")):
                buf = ort.OrtValue.ortvalue_from_numpy(self._kv[2 * i + j][start:stop])
                b.bind_ortvalue_input(io.kv_name("past", kind, i), buf)
                b.bind_ortvalue_output(io.kv_name("present", kind, i), buf)
        b.bind_ortvalue_input(self.graph.names["attention_mask"],
                              ort.OrtValue.ortvalue_from_numpy(self._mask[start:stop]))
        if not self.m.all_logits:
            view = ort.OrtValue.ortvalue_from_numpy(self._logits[start:stop])
            b.bind_ortvalue_output(self.graph.logits_name, view)
        self._rows_bound = (start, stop)
        self._step_ready = False

    def step(self, tokens: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Append one token per row (rows where `active` is False are left untouched) -> logits [batch, vocab].
        The hot path: inputs live in buffers bound once and are updated in place."""
        self._ensure_capacity(int(self.lengths.max()) + 1)
        self._bind_rows(0, self.batch)
        if not self._step_ready:  # first step after a prefill or a capacity change
            self._bind_step()
        self._ids[:, 0] = tokens
        if active is None:
            self._pos[:, 0] = self.lengths
            self._set_mask(0, self.lengths)
            self._q[:] = 1
        elif self.graph.ragged:
            self._q[:] = active
            self._set_mask(0, np.where(active, self.lengths, np.maximum(self.lengths - 1, 0)))
            self._pos[:, 0] = np.where(active, self.lengths, -1)
        else:  # an idle row's slot gets a padding token, overwritten by its next one
            self._set_mask(0, self.lengths)
            self._pos[:, 0] = np.where(active, self.lengths, -1)
        if self.m.all_logits:
            self.binding.bind_output(self.graph.logits_name, "cpu")
        self.graph.ort_session.run_with_iobinding(self.binding)
        self.lengths += 1 if active is None else active  # only once the cache really holds the token
        if self.m.all_logits:
            return self.binding.get_outputs()[self._logits_slot].numpy()[:, 0]
        return self._logits[:, 0]

    def _bind_step(self) -> None:
        self._ids = np.zeros((self.batch, 1), dtype=np.int64)
        self._pos = np.zeros((self.batch, 1), dtype=np.int64)
        self._q = np.ones(self.batch, dtype=np.int32)
        feeds: dict[str, np.ndarray] = {self.graph.names[k]: a for k, a in (("input_ids", self._ids),
                                                                             ("position_ids", self._pos))}
        if self.graph.ragged:
            feeds[QUERY_SEQLENS] = self._q
        for name, arr in feeds.items():
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        self._step_ready = True

    def _set_mask(self, start: int, seqlens_k: np.ndarray) -> None:
        """Rows start, start + 1, ...: ones on their first seqlens_k + 1 slots (GQA's seqlens_k, from the mask)."""
        rows = self._mask[start:start + len(seqlens_k)]
        np.less_equal(self._slots[None, :], np.asarray(seqlens_k)[:, None], out=rows, casting="unsafe")

    def _run(self, feeds: dict[str, np.ndarray]) -> None:
        for key, arr in feeds.items():
            self.binding.bind_cpu_input(self.graph.names.get(key, key), arr)
        if self.m.all_logits:  # the shape changes with the step: let onnxruntime allocate anew
            self.binding.bind_output(self.graph.logits_name, "cpu")
        self.graph.ort_session.run_with_iobinding(self.binding)
