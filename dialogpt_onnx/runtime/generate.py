"""The per-token loop: step → process logits → pick → stop?

RowStep is the one per-row token step: every path that generates (generate, stream, chat, MMI's
candidates, the server's engine) chooses a row's tokens through it, so the same options and seed give
the same reply everywhere. Each row owns its random generator: choice i of n samples with seed + i
(`row_seed`), whatever else is in its batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .protocols import Cache
from .results import FinishReason, TokenLogprob
from .sampling import SamplingOptions, choose, process
from .scoring import token_logprob, token_logprobs
from .text import StopText


def plain_greedy(opts: SamplingOptions) -> bool:
    return not opts.do_sample and not opts.penalized


def row_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice `choice` (0-based) of a request's n: seed + choice, so that choice 0 is the reply
    the seed gives alone and the choices differ. None (unseeded) stays None: fresh entropy per row."""
    return None if seed is None else (seed + choice) % 2**63


@dataclass(eq=False)
class RowStep:
    """One row's reply as it is chosen, token by token: its random generator, its history (for the
    penalties and n-gram bans), its stop text, its log-probabilities and why it ended.

    `history` is the row's tokens so far (prompt, or the chat's kept history + new turn); `stop` the row's
    StopText when the caller shows text (its pieces, cut at a stop string) or has stop strings; with
    `logprob` the summed log-probability of the reply under the raw logits is kept (what MMI candidates
    and Generation.logprob carry)."""

    opts: SamplingOptions
    eos: int
    history: list[int]
    stop: StopText | None = None
    choice: int = 0
    logprob: bool = False
    stop_at_eos: bool = True
    ids: list[int] = field(default_factory=list)
    sum_logprob: float = 0.0
    token_logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None  # set when the row is finished
    rng: np.random.Generator = field(init=False)
    _fast: bool = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(row_seed(self.opts.seed, self.choice))
        self._fast = plain_greedy(self.opts)
        self.history = list(self.history)
        if self.opts.top_logprobs is not None:
            self.token_logprobs = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def next(self, logits: np.ndarray) -> int:
        """Choose this row's next token from its raw logits ([vocab]) and record it; sets finish_reason
        when the reply is over (EOS, a stop string, or max_new_tokens)."""
        o = self.opts
        if self._fast:
            t = int(np.argmax(logits))
        else:
            t = choose(process(logits, self.history, len(self.ids), o, self.eos), o, self.rng)
            self.history.append(t)
        if self.token_logprobs is not None and o.top_logprobs is not None:
            entry = token_logprobs(logits, t, o.top_logprobs)
            self.token_logprobs.append(entry)
            self.sum_logprob += entry.logprob
        elif self.logprob:
            self.sum_logprob += token_logprob(logits, t)
        self.ids.append(t)
        stopped = self.stop_at_eos and t == self.eos
        if self.stop is not None and t != self.eos:
            self.stop.push(t)
            stopped = stopped or self.stop.matched is not None
        if stopped:
            self.finish_reason = "stop"
        elif len(self.ids) >= o.max_new_tokens:
            self.finish_reason = "length"
        return t


def generate_ids(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                 stop_at_eos: bool = True, keep_cache: bool = False,
                 on_logits: Callable[[int, np.ndarray], None] | None = None,
                 history: list[list[int]] | None = None, stops: Sequence[StopText] | None = None,
                 choices: Sequence[int] | None = None, logprob: bool = False,
                 rows: list[RowStep] | None = None) -> Iterator[np.ndarray]:
    """Yield the new token of every row at each step ([batch] ids; -1 for rows already finished).

    The last token yielded for a row is not in the cache (nobody needs its logits); a chat session
    prepends it to the next turn. With keep_cache the cache is not reset: `prompts` are appended to what
    it holds. `history` (per row, defaults to the prompts) feeds repetition penalty and n-gram bans.
    `on_logits(step, logits)` sees each step's raw logits (parity checks use it). With `stops` (one
    StopText per row) each new token is pushed to its row's before it is yielded, and a row whose stop
    string came is finished: its text is what the StopText gave. `choices[b]` is row b's choice index
    (its seed is seed + choice; default 0 for every row). `rows`, when given, receives each row's RowStep
    (its ids, log-probabilities and finish reason)."""
    if opts.max_new_tokens == 0:
        return
    if not keep_cache:
        dec.reset(len(prompts))
    steps = [RowStep(opts, eos, (history if history is not None else prompts)[b],
                     None if stops is None else stops[b], 0 if choices is None else choices[b], logprob,
                     stop_at_eos) for b in range(len(prompts))]
    if rows is not None:
        rows[:] = steps
    done = np.zeros(len(prompts), dtype=bool)
    logits = dec.prefill(prompts)
    for step in range(opts.max_new_tokens):
        if on_logits is not None:
            on_logits(step, logits)
        out = np.array([-1 if done[b] else steps[b].next(logits[b]) for b in range(len(prompts))])
        yield out
        done |= np.array([s.done for s in steps])
        if done.all():
            return
        logits = dec.step(np.where(done, eos, out), active=None if not done.any() else ~done)


@dataclass
class Sampled:
    """One row's reply as generation left it."""
    ids: list[int] = field(default_factory=list)
    logprob: float = 0.0  # summed over ids under the raw logits (EOS included when generated)
    token_logprobs: list[TokenLogprob] | None = None  # with opts.top_logprobs
    finish_reason: FinishReason = "length"


def sample_with_logprobs(dec: Cache, prompts: list[list[int]], opts: SamplingOptions, eos: int,
                         keep_cache: bool = False, history: list[list[int]] | None = None,
                         stops: Sequence[StopText] | None = None, choices: Sequence[int] | None = None
                         ) -> list[Sampled]:
    """generate_ids to the end, with each row's tokens, their summed log-probability under the raw logits
    (what candidates for reranking need), per-token log-probabilities if asked, and why it ended."""
    rows: list[RowStep] = []
    for _ in generate_ids(dec, prompts, opts, eos, keep_cache=keep_cache, history=history, stops=stops,
                          choices=choices, logprob=True, rows=rows):
        pass
    return [Sampled(r.ids, r.sum_logprob, r.token_logprobs, r.finish_reason or "length") for r in rows]
