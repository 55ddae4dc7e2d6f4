"""The per-token loop: step → process logits → pick → stop?"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .graph import Cache
from .results import TokenLogprob
from .sampling import SamplingOptions, choose, process
from .scoring import token_logprob, token_logprobs
from .text import StopText


def plain_greedy(opts: SamplingOptions) -> bool:
    return not opts.do_sample and not opts.penalized


def generate_ids(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                 stop_at_eos: bool = True, keep_cache: bool = False,
                 on_logits: Callable[[int, np.ndarray], None] | None = None,
                 history: list[list[int]] | None = None, stops: Sequence[StopText] | None = None
                 ) -> Iterator[np.ndarray]:
    """Yield the new token of every row at each step ([batch] ids; -1 for rows already finished).

    The last token yielded for a row is not in the cache (nobody needs its logits); a chat session
    prepends it to the next turn. With keep_cache the cache is not reset: `prompts` are appended to what
    it holds. `history` (per row, defaults to the prompts) feeds repetition penalty and n-gram bans.
    `on_logits(step, logits)` sees each step's raw logits (parity checks use it). With `stops` (one
    StopText per row) each new token is pushed to its row's before it is yielded, and a row whose stop
    string came is finished: its text is what the StopText gave."""
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
        out = np.where(done, -1, nxt)
        if stops is not None:
            for row in np.flatnonzero(~done).tolist():
                if nxt[row] != eos:
                    stops[row].push(int(nxt[row]))
        yield out
        if not fast:
            for b in np.flatnonzero(~done):
                hist[b].append(int(nxt[b]))
        if stop_at_eos:
            done |= nxt == eos
        if stops is not None:
            done |= np.array([s.matched is not None for s in stops])
        if done.all() or step + 1 == opts.max_new_tokens:
            return
        logits = dec.step(nxt, active=None if not done.any() else ~done)


@dataclass
class Sampled:
    """One row's reply as generation left it."""
    ids: list[int] = field(default_factory=list)
    logprob: float = 0.0  # summed over ids under the raw logits (EOS included when generated)
    token_logprobs: list[TokenLogprob] | None = None  # with opts.top_logprobs
    finish_reason: str = "length"  # "stop": EOS or a stop string


def sample_with_logprobs(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                         keep_cache: bool = False, history: list[list[int]] | None = None,
                         stops: Sequence[StopText] | None = None) -> list[Sampled]:
    """generate_ids to the end, with each row's tokens, their summed log-probability under the raw logits
    (what candidates for reranking need), per-token log-probabilities if asked, and why it ended."""
    rows = [Sampled(token_logprobs=None if opts.top_logprobs is None else []) for _ in prompts]
    seen: list[np.ndarray] = []

    def keep(_: int, logits: np.ndarray) -> None:
        seen[:] = [logits]

    for step_ids in generate_ids(dec, prompts, opts, eos, keep_cache=keep_cache, on_logits=keep, history=history,
                                 stops=stops):
        raw = seen[0]
        for b, t in enumerate(step_ids):
            if t < 0:
                continue
            r = rows[b]
            r.ids.append(int(t))
            if r.token_logprobs is not None and opts.top_logprobs is not None:
                r.token_logprobs.append(token_logprobs(raw[b], int(t), opts.top_logprobs))
                r.logprob += r.token_logprobs[-1].logprob
            else:
                r.logprob += token_logprob(raw[b], int(t))
            if t == eos or (stops is not None and stops[b].matched is not None):
                r.finish_reason = "stop"
    return rows
