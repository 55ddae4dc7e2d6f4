"""Chat sessions keep their KV state between turns, within a memory budget.

An OpenAI-style client sends the whole conversation with every turn, so a session is recognised by its
tokens: when a reply ends, the engine stores its row's KV (history + reply) under those tokens; the next
request whose prompt starts with them (the same chat, one turn later) loads the stored KV into its row
and prefills only the new turns. Least-recently-used entries are evicted past the budget; an evicted chat
is recomputed on its next turn, with the same reply (the KV is the same up to float rounding, exact for
row-wise int8: tests/test_invariance.py).

Hand-written because onnxruntime has no KV store: onnxruntime-genai keeps one cache per generator only.
Owned by the engine's worker thread alone: no locks.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from runtime.contrib_graph import RowKV


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """Saved rows by tenant and tokens, least recently used first, at most `budget_bytes` in all. A lookup
    sees only its own tenant's rows: one client's KV never serves (nor, by a faster reply, reveals) another's
    conversation. The budget and eviction are shared."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the prefix cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget = budget_bytes
        self._rows: OrderedDict[tuple[str, tuple[int, ...]], RowKV] = OrderedDict()
        self.nbytes = 0
        self.hits = 0  # lookups that reused tokens
        self.reused_tokens = 0  # prompt tokens not recomputed thanks to the cache

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, tenant: str, prompt: list[int]) -> tuple[RowKV | None, int]:
        """The tenant's saved row sharing the longest prefix with `prompt`, and how many tokens of it to
        reuse: at most len(prompt) - 1, since the prompt's last token must be fed to get the next logits."""
        best, best_n = None, 0
        for (owner, _), row in self._rows.items():
            if owner != tenant:
                continue
            n = min(common_prefix(row.tokens, prompt), len(prompt) - 1)
            if n > best_n:
                best, best_n = row, n
        if best is not None:
            self._rows.move_to_end((tenant, best.tokens))
            self.hits += 1
            self.reused_tokens += best_n
        return best, best_n

    def store(self, tenant: str, row: RowKV) -> None:
        """Keep `row` for `tenant`, dropping the tenant's saved rows it extends (the same chat's earlier
        turns), then the least recently used ones while over budget. A row larger than the budget is not kept."""
        if row.nbytes > self.budget or not row.tokens:
            return
        for key in [(o, k) for o, k in self._rows if o == tenant and len(k) <= len(row.tokens)
                    and row.tokens[: len(k)] == k]:
            self._drop(key)
        self._rows[(tenant, row.tokens)] = row
        self.nbytes += row.nbytes
        while self.nbytes > self.budget:
            self._drop(next(iter(self._rows)))

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        self.nbytes -= self._rows.pop(key).nbytes

