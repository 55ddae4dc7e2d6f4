"""Chat sessions keep their KV state between turns, within a memory budget.

An OpenAI-style client sends the whole conversation with every turn, so a session is recognised by its
tokens: when a reply ends, the engine stores its row's KV (history + reply) under those tokens; the next
request whose prompt starts with them (the same chat, one turn later) loads the stored KV into its row
and prefills only the new turns. Least-recently-used entries are evicted past the budget; an evicted chat
is recomputed on its next turn, with the same reply (the KV is the same up to float rounding, exact for
row-wise int8: tests/runtime/test_invariance.py).

Lookups do not scan the stored rows: each row is indexed by a chained hash of its tokens at each of its
first BLOCK positions, every BLOCK-th one after and its end; a lookup hashes the prompt once and probes
each of its positions, so its cost depends on the prompt's length only (a scan took 15 ms per request at
4,000 stored chats). The reuse found is the longest one, or at most BLOCK - 1 tokens short of it.

The cache may outlive the process (`dialogpt-onnx serve --prefix-cache-file F`, off by default): save() writes
every row with its tenant (a hash, never a key or salt), least recently used first, tied to the model's
identity and a checksum; restore() reads them back, so chats continue without prefilling their history
after a restart. The file holds conversations: it is written readable by its owner only.

Hand-written because onnxruntime has no KV store: onnxruntime-genai keeps one cache per generator only.
Owned by the engine's worker thread alone (save/restore run before it starts or after it ends): no locks.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dialogpt_onnx.runtime.archive import (
    Bounds,
    digest,
    is_archive_of,
    numbered,
    private_file,
    read_archive,
    write_archive,
)
from dialogpt_onnx.runtime.checks import is_integer
from dialogpt_onnx.runtime.errors import UsageError
from dialogpt_onnx.runtime.manifest import ModelShape
from dialogpt_onnx.runtime.protocols import RowKV

# Past their first BLOCK tokens rows are indexed every BLOCK tokens: a reuse may stop up to BLOCK - 1 tokens
# short of the longest (~1 ms of prefill); smaller blocks cost index memory for every row.
BLOCK = 16

_Key = tuple[str, tuple[int, ...]]  # (tenant, the row's tokens)

FORMAT = "dialogpt-onnx prefix cache 1"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def prefix_hashes(tokens: Sequence[int]) -> list[int]:
    """h[i] identifies tokens[:i + 1] (chained, so all of them cost one pass). Equal hashes are only a
    hint: every match is confirmed on the tokens themselves."""
    out, h = [], 0
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


class PrefixCache:
    """Saved rows by tenant and tokens, least recently used first, at most `budget_bytes` in all. A lookup
    sees only its own tenant's rows: one client's KV never serves (nor, by a faster reply, reveals) another's
    conversation. The budget and eviction are shared."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the prefix cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget = budget_bytes
        self._rows: OrderedDict[_Key, RowKV] = OrderedDict()
        # (tenant, prefix hash) -> the rows ending there / holding that prefix (an indexed position), in
        # insertion order (dicts as ordered sets)
        self._ends: dict[tuple[str, int], dict[_Key, None]] = {}
        self._blocks: dict[tuple[str, int], dict[_Key, None]] = {}
        self.nbytes = 0
        self.hits = 0  # lookups that reused tokens
        self.reused_tokens = 0  # prompt tokens not recomputed thanks to the cache

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, tenant: str, prompt: list[int]) -> tuple[RowKV | None, int]:
        """The tenant's saved row sharing the longest prefix with `prompt` (to within BLOCK - 1 tokens), and
        how many tokens of it to reuse: at most len(prompt) - 1, since the prompt's last token must be fed
        to get the next logits."""
        best, best_n = None, 0
        for key in self._candidates(tenant, prompt):
            n = min(common_prefix(key[1], prompt), len(prompt) - 1)
            if n > best_n:
                best, best_n = self._rows[key], n
        if best is not None:
            self._rows.move_to_end((tenant, best.tokens))
            self.hits += 1
            self.reused_tokens += best_n
        return best, best_n

    def _candidates(self, tenant: str, prompt: list[int]) -> list[_Key]:
        """The row that ends at the prompt's longest such prefix, and the newest row holding its longest
        indexed prefix (a row matching further is indexed only there): one probe per prompt position."""
        hashes = prefix_hashes(prompt)
        found: list[_Key] = []
        for index, positions in ((self._ends, range(len(prompt), 0, -1)),
                                 (self._blocks, _positions(len(prompt))[::-1])):
            for i in positions:
                rows = index.get((tenant, hashes[i - 1]))
                if rows:
                    found.append(next(reversed(rows)))
                    break
        return found

    def store(self, tenant: str, row: RowKV) -> None:
        """Keep `row` for `tenant`, dropping the tenant's saved rows it extends (the same chat's earlier
        turns), then the least recently used ones while over budget. A row larger than the budget is not kept."""
        if row.nbytes > self.budget or not row.tokens:
            return
        hashes = prefix_hashes(row.tokens)
        for i, h in enumerate(hashes, start=1):  # rows that end at position i and are a prefix of this one
            for key in [k for k in self._ends.get((tenant, h), ()) if k[1] == row.tokens[:i]]:
                self._drop(key)
        key = (tenant, row.tokens)
        self._rows[key] = row
        self.nbytes += row.nbytes
        for index, slot in self._slots(key, hashes):
            index.setdefault(slot, {})[key] = None
        while self.nbytes > self.budget:
            self._drop(next(iter(self._rows)))

    def save(self, path: str | Path, model: str, replies: ReplyTokens) -> None:
        """Write every row, and the reply ids by text that lead back to them, to `path` for the model whose
        identity is `model` (see runtime.archive)."""
        rows = list(self._rows.items())  # least recently used first: restore() keeps that order
        tokens = np.array([t for (_, toks) in self._rows for t in toks], dtype=np.int32)
        lengths = np.array([len(toks) for (_, toks) in self._rows], dtype=np.int32)
        kv = tuple(np.concatenate([row.kv[i] for _, row in rows], axis=1) for i in range(len(rows[0][1].kv))) \
            if rows else ()
        said = [[ns, text, list(ids)] for ns, text, ids in replies.items()]
        meta = {"model": model, "tenants": [tenant for tenant, _ in self._rows], "replies": said,
                "sha256": _checksum(tokens, lengths, kv, said)}
        write_archive(Path(path), FORMAT, meta, {"tokens": tokens, "lengths": lengths,
                                                 **{f"kv_{i}": a for i, a in enumerate(kv)}}, "a prefix cache")

    def restore(self, path: str | Path, model: str, shape: ModelShape, replies: ReplyTokens) -> str:
        """Add the rows saved at `path` (the newest kept if over budget) and its replies' ids to `replies`,
        and say what was done in one line. The file is bounded before it is inflated (this budget's KV of
        a model of `shape`, and one chat more) and its metadata checked (token ids in the vocabulary).
        A file saved from another model, damaged or too big is set aside with that line (the next save
        replaces it); a file this project did not write, or that someone else could have written, is
        refused (UsageError)."""
        path = Path(path)
        if not path.exists():
            return f"prefix cache: {path} does not exist yet (written at shutdown)"
        private_file(path, "the prefix cache", "point --prefix-cache-file at a file of your own (chmod go-w)")
        if not is_archive_of(path, FORMAT):
            raise UsageError(f"{path} is not a prefix cache this project saved (or its header is damaged): choose "
                             "another --prefix-cache-file, or delete it if it is one", "prefix_cache_file")
        try:
            meta, arrays = read_archive(path, FORMAT, "a prefix cache", self._bounds(shape))
            tokens, lengths = arrays["tokens"], arrays["lengths"]
            kv = numbered(arrays, "kv_")
            tenants, said = list(meta["tenants"]), meta["replies"]
            consistent = len(tenants) == len(lengths) and int(lengths.sum()) == len(tokens) and \
                (lengths >= 0).all() and all(isinstance(t, str) for t in tenants) and \
                ((tokens >= 0) & (tokens < shape.vocab_size)).all() and len(kv) in (0, 2 * shape.n_layer) and \
                all(a.shape[1] == len(tokens) for a in kv) and _replies_ok(said, shape.vocab_size)
            checksum = _checksum(tokens, lengths, kv, said) if consistent else None
        except (UsageError, KeyError, TypeError):
            consistent = False
        if not consistent or meta.get("sha256") != checksum:
            return (f"prefix cache: {path} is damaged, or holds more than --prefix-cache-mb of chats; starting "
                    "empty (it is replaced at shutdown)")
        if meta.get("model") != model:
            return f"prefix cache: {path} was saved from another model; starting empty (it is replaced at shutdown)"
        at = 0
        for tenant, n in zip(tenants, lengths.tolist(), strict=True):
            # copies: a row must not keep the whole file's arrays alive
            self.store(tenant, RowKV(tuple(tokens[at:at + n].tolist()),
                                     tuple(np.ascontiguousarray(a[:, at:at + n]) for a in kv)))
            at += n
        for ns, text, ids in said:
            replies.record(ns, text, ids)
        return f"prefix cache: restored {len(self)} of {len(tenants)} chats ({self.nbytes / 2**20:.1f} MB) from {path}"

    def _bounds(self, shape: ModelShape) -> Bounds:
        """What a saved cache may hold: this budget's KV and one whole chat more, in this model's shape."""
        per_token = 2 * shape.n_layer * shape.n_head * shape.head_dim * 4
        max_tokens = (self.budget // per_token) + shape.n_positions

        def check(name: str, dims: tuple[int, ...], dtype: np.dtype) -> str | None:
            if name in ("tokens", "lengths"):
                ok = dtype == np.int32 and len(dims) == 1 and dims[0] <= max_tokens
            else:
                ok = name.startswith("kv_") and name[3:].isdigit() and int(name[3:]) < 2 * shape.n_layer and \
                    dtype == np.float32 and len(dims) == 3 and (dims[0], dims[2]) == (shape.n_head, shape.head_dim) \
                    and dims[1] <= max_tokens
            return None if ok else f"{name} {dtype}{list(dims)} is more than --prefix-cache-mb holds"

        return Bounds(max_tokens * (per_token + 8), check)

    def _drop(self, key: _Key) -> None:
        row = self._rows.pop(key)
        self.nbytes -= row.nbytes
        for index, slot in self._slots(key, prefix_hashes(key[1])):
            rows = index[slot]
            del rows[key]
            if not rows:
                del index[slot]

    def _slots(self, key: _Key, hashes: list[int]) -> list[tuple[dict, tuple[str, int]]]:
        """Where a row is indexed: at its end, and at its _positions."""
        tenant, n = key[0], len(key[1])
        return [(self._ends, (tenant, hashes[n - 1]))] + [(self._blocks, (tenant, hashes[i - 1]))
                                                          for i in _positions(n)]


class ReplyTokens:
    """The token ids of recent replies, by their text, so that a client's next request (which sends the
    reply back as text) is rebuilt from the tokens the model produced, not from a re-encoding of the text.

    Why: byte-level BPE does not round-trip a model's output (a reply may spell " movies" as " mov" +
    "ies"; re-encoding gives " movies"), so a re-encoded history diverges from the stored KV at the first
    such token and is prefilled again from there; it also differs from what a ChatSession, which keeps
    ids, feeds the model. With these ids a served chat replies exactly as a ChatSession does. Kept per
    prefix-cache namespace (a tenant's), so that no client learns what was said to another (a known reply
    would change its prompt's token count). Bounded (least recently used out); thread-safe.
    """

    def __init__(self, max_replies: int = 4096) -> None:
        self.max_replies = max_replies
        self._ids: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, namespace: str | None, text: str, ids: list[int]) -> None:
        if namespace is None:
            return
        with self._lock:
            self._ids[(namespace, text)] = tuple(ids)
            self._ids.move_to_end((namespace, text))
            while len(self._ids) > self.max_replies:
                self._ids.popitem(last=False)

    def items(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(namespace, text, ids) of every recorded reply, least recently used first."""
        with self._lock:
            return [(ns, text, ids) for (ns, text), ids in self._ids.items()]

    def get(self, namespace: str | None, text: str) -> list[int] | None:
        if namespace is None:
            return None
        with self._lock:
            ids = self._ids.get((namespace, text))
            if ids is not None:
                self._ids.move_to_end((namespace, text))
        return None if ids is None else list(ids)


def _replies_ok(said: object, vocab: int) -> bool:
    """A saved cache's replies: [namespace, text, token ids in the vocabulary] each."""
    return isinstance(said, list) and all(
        isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and isinstance(r[1], str) and
        isinstance(r[2], list) and all(is_integer(t) and 0 <= t < vocab for t in r[2]) for r in said)


def _checksum(tokens: np.ndarray, lengths: np.ndarray, kv: tuple[np.ndarray, ...], said: list) -> str:
    """A saved cache's sha256: its rows and the replies' ids it keeps (as JSON)."""
    return digest(tokens, lengths, *kv, np.frombuffer(json.dumps(said).encode(), np.uint8))


def _positions(n: int) -> list[int]:
    """The prefix lengths (<= n) at which rows are indexed: each up to BLOCK, then every BLOCK-th."""
    return [*range(1, min(n, BLOCK) + 1), *range(2 * BLOCK, n + 1, BLOCK)]
