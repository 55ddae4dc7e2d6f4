"""Log-probabilities of a given reply after a given context, computed by the runtime's own graph.

With a last-logits graph (the default export) the reply is teacher-forced one token per step through
the KV cache, exactly the computation chat does; an `--all-logits` export reads the whole reply in one
pass. Either way the numbers are what this model file computes, so they measure its quantization.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError
from .protocols import Cache
from .results import TokenLogprob


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log-softmax of one row of logits at one token (a log-sum-exp, without the full softmax)."""
    top = logits.max()
    return float(logits[token] - top - np.log(np.exp(logits - top).sum()))


def token_logprobs(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """The token's log-probability under one row of logits, with the k most likely tokens' (best first)."""
    lp = log_softmax(logits)
    if k == 0:
        return TokenLogprob(token, float(lp[token]), [])
    best = np.argpartition(-lp, k)[:k] if k < lp.shape[-1] else np.arange(lp.shape[-1])
    best = best[np.argsort(-lp[best], kind="stable")]
    return TokenLogprob(token, float(lp[token]), [(int(t), float(lp[t])) for t in best])


def batch_reply_logprobs(cache: Cache, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
    """reply_logprobs for many (context, reply) pairs: one ragged batch through an all-logits graph,
    one pair at a time through a last-logits graph."""
    if not cache.m.all_logits:
        return [reply_logprobs(cache, c, r) for c, r in pairs]
    for c, r in pairs:
        if not c or not r:
            raise UsageError("context and reply must both be non-empty token lists")
    rows = [c + r for c, r in pairs]
    cache.reset(len(rows), reserve=max(map(len, rows)))
    cache.prefill(rows)
    assert cache.last_all_logits is not None  # an all-logits graph keeps every position's logits
    out = []
    for b, (c, r) in enumerate(pairs):
        lp = log_softmax(cache.last_all_logits[b, len(c) - 1: len(c) + len(r) - 1])
        out.append(lp[np.arange(len(r)), r])
    return out


def reply_logprobs(cache: Cache, context: list[int], reply: list[int]) -> np.ndarray:
    """log p(reply[i] | context + reply[:i]) for every i, as float64 [len(reply)].

    `cache` is any runtime.protocols.Cache (from `model.graph.new_cache()`); it is reset first."""
    if cache.m.all_logits:
        return batch_reply_logprobs(cache, [(context, reply)])[0]
    if not context or not reply:
        raise UsageError("context and reply must both be non-empty token lists")
    cache.reset(1, reserve=len(context) + len(reply))
    out = np.empty(len(reply))
    logits = cache.prefill([context])[0]
    for i, tok in enumerate(reply):
        out[i] = token_logprob(logits.astype(np.float64), tok)
        if i + 1 < len(reply):
            logits = cache.step(np.array([tok]))[0]
    return out
