"""The per-token loop: step → process logits → pick → stop?"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .graph import Cache
from .sampling import SamplingOptions, choose, process
from .scoring import token_logprob


def plain_greedy(opts: SamplingOptions) -> bool:
    return (not opts.do_sample and opts.repetition_penalty == 1.0 and not opts.no_repeat_ngram_size
            and opts.min_new_tokens == 0)


def generate_ids(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                 stop_at_eos: bool = True, keep_cache: bool = False,
                 on_logits: Callable[[int, np.ndarray], None] | None = None,
                 history: list[list[int]] | None = None) -> Iterator[np.ndarray]:
    """Yield the new token of every row at each step ([batch] ids; -1 for rows already finished).

    The last token yielded for a row is not in the cache (nobody needs its logits); a chat session
    prepends it to the next turn. With keep_cache the cache is not reset: `prompts` are appended to what
    it holds. `history` (per row, defaults to the prompts) feeds repetition penalty and n-gram bans.
    `on_logits(step, logits)` sees each step's raw logits (parity checks use it)."""
    if opts.max_new_tokens == 0:
        return
    if not keep_cache:
        dec.reset(len(prompts))
    rng = np.random.default_rng(opts.seed)
    hist = [list(h) for h in (history if history is not None else prompts)]
    batch = len(prompts)
    done = np.zeros(batch, dtype=bool)
    fast = plain_greedy(opts)
    logits = dec.prefill(prompts)
    for step in range(opts.max_new_tokens):
        if on_logits is not None:
            on_logits(step, logits)
        if fast:
            nxt = logits.argmax(axis=-1)
        else:
            nxt = np.array([eos if done[b] else choose(process(logits[b], hist[b], step, opts, eos), opts, rng)
                            for b in range(batch)])
        yield np.where(done, -1, nxt)
        if not fast:
            for b in np.flatnonzero(~done):
                hist[b].append(int(nxt[b]))
        if stop_at_eos:
            done |= nxt == eos
        if done.all() or step + 1 == opts.max_new_tokens:
            return
        logits = dec.step(nxt, active=None if not done.any() else ~done)


def sample_with_logprobs(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                         keep_cache: bool = False, history: list[list[int]] | None = None
                         ) -> list[tuple[list[int], float]]:
    """generate_ids to the end, with each row's tokens and their summed log-probability under the raw
    logits (EOS included when generated): what candidates for reranking need."""
    replies: list[list[int]] = [[] for _ in prompts]
    logprob = np.zeros(len(prompts))
    seen: list[np.ndarray] = []

    def keep(_: int, logits: np.ndarray) -> None:
        seen[:] = [logits]

    for step_ids in generate_ids(dec, prompts, opts, eos, keep_cache=keep_cache, on_logits=keep, history=history):
        raw = seen[0]
        for b, t in enumerate(step_ids):
            if t >= 0:
                replies[b].append(int(t))
                logprob[b] += token_logprob(raw[b], int(t))
    return [(r, float(lp)) for r, lp in zip(replies, logprob, strict=True)]
