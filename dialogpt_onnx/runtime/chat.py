"""Multi-turn DialoGPT chat: every turn ends with <|endoftext|>; the KV cache is kept across turns.

A ChatSession owns its history and its KV cache; the model it came from is shared and read-only.
One ChatSession is one conversation and answers one turn at a time: many chats may run concurrently
on one model (one per thread), but a turn started on a chat whose reply is being generated in another
thread raises RuntimeError.

Turns that do not finish normally:
- a stream that is abandoned (closed, garbage-collected, interrupted by Ctrl-C between pieces, or left
  unfinished when the next turn starts) keeps the user turn and the partial reply said so far, ended
  with <|endoftext|>; resuming it afterwards yields nothing more;
- a stream whose first piece was never asked for adds nothing;
- a turn that fails with an error is rolled back (history as before the turn; the cache is recomputed).

Memory: the cache holds at most history + reply tokens, `model.kv_bytes_per_token` bytes each
(DialoGPT-small: 72 KiB per token, so the default 128-token budget + 64-token reply costs ~14 MB);
`release()` frees it while a chat is idle (its next turn recomputes the history).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tokenizers import Tokenizer

from .checks import fits_context, optional_integer
from .errors import UsageError
from .generate import generate_ids, sample_with_logprobs
from .manifest import Manifest
from .protocols import Graph, RowKV
from .results import Generation
from .sampling import SamplingOptions
from .text import StopText

if TYPE_CHECKING:
    from .saved_chat import SavedChat

# Tokens of history (older turns + the new user turn) kept by default. Measured with
# benchmarks.studies.history_budget on the bundled 8 x 256 model (Topical-Chat test replies): NLL within 1% of the
# best from 32 to 128 tokens, 1.7-3% worse at 256 and beyond (docs/decoding.md). Re-measure with real DialoGPT
# weights.
DEFAULT_HISTORY_TOKENS = 128


class ChatModel(Protocol):
    """What a chat needs of its model (runtime.model.DialogModel)."""

    tokenizer: Tokenizer
    eos: int
    manifest: Manifest

    @property
    def graph(self) -> Graph: ...

    @property
    def max_length(self) -> int: ...
    def options(self, **kw: Any) -> SamplingOptions: ...
    def encode_turn(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class Ranked(Protocol):
    @property
    def best(self) -> Generation: ...


class Reranker(Protocol):
    """What a chat needs of a reranker (runtime.mmi.MMIReranker): candidates per reply, how they are
    sampled, and how they are ranked."""

    forward: Any

    @property
    def candidates(self) -> int: ...
    def sampling(self, opts: SamplingOptions) -> SamplingOptions: ...
    def rerank(self, prompt: list[int], generations: list[Generation]) -> Ranked: ...


class ChatSession:
    def __init__(self, model: ChatModel, opts: SamplingOptions, max_history_tokens: int | None,
                 reranker: Reranker | None = None) -> None:
        budget = optional_integer("max_history_tokens", max_history_tokens, 1, f"default {DEFAULT_HISTORY_TOKENS}")
        budget = DEFAULT_HISTORY_TOKENS if budget is None else budget
        self._model = model
        self._opts = opts
        self.initial_options = opts  # what `set_options(NAME=...)` goes back to (a REPL's `/set NAME default`)
        self._reranker = reranker  # MMI: each reply is the best of N sampled candidates, given whole
        self._limit = model.max_length
        self._budget = budget
        self._turns: list[list[int]] = []  # token ids per turn, each ending with EOS
        self._cache = model.graph.new_cache()
        self._cached = 0  # tokens of _turns (flattened, from the start) that the cache holds
        # The turn being streamed, if any; weak, so a stream the caller drops is closed (and kept) at once.
        self._active: weakref.ref[Generator[str, None, None]] | None = None
        self._lock = threading.Lock()  # guards starting a turn (closing the previous one, installing the new)
        self.stats = {"prefilled_tokens": 0, "recomputes": 0, "generated_tokens": 0}

    # -- state, read-only from outside --------------------------------------------------------
    @property
    def turns(self) -> list[list[int]]:
        """Token ids per turn (user, bot, user, ...), each ending with <|endoftext|>."""
        return [list(t) for t in self._turns]

    @property
    def history(self) -> list[str]:
        return [self._model.decode(t) for t in self._turns]

    @property
    def max_history_tokens(self) -> int:
        return self._budget

    @property
    def kv_bytes(self) -> int:
        """Bytes the chat's KV cache holds now."""
        return self._cache.nbytes

    def reset(self) -> None:
        """Forget the conversation (the cache's memory is kept for the next turn)."""
        with self._lock:
            self._finish_active()
            self._turns.clear()
            self._cached = 0

    def release(self) -> None:
        """Free the KV cache while the chat is idle; the history is kept and recomputed at the next turn."""
        with self._lock:
            self._finish_active()
            self._cache.release()
            self._cached = 0

    def save(self, path: str | Path) -> None:
        """Write this chat (turns, options, history budget and KV cache) to `path`, for model.chat(restore=
        path) to go on with it without recomputing the history. An unfinished stream is ended first (it
        keeps its partial reply). The portable graph's chats save their turns only (recomputed at restore)."""
        from .saved_chat import SavedChat, write

        with self._lock:
            self._finish_active()
            flat = [t for turn in self._turns for t in turn]
            cached, kv = self._cached, ()
            save_row = getattr(self._cache, "save_row", None)  # the contrib graph's caches have row operations
            if cached and save_row is not None:
                kv = save_row(0, flat[:cached]).kv
            else:
                cached = 0
            write(path, self._model.manifest, SavedChat(self.turns, cached, kv, dict(self._opts.__dict__),
                                                        self._budget))

    def _restore(self, saved: SavedChat) -> None:
        """Take a saved chat's turns and KV (see runtime.saved_chat); called on a new chat only."""
        self._turns = [list(t) for t in saved.turns]
        load_row = getattr(self._cache, "load_row", None)
        if saved.cached and load_row is not None:
            flat = [t for turn in saved.turns for t in turn]
            self._cache.reset(1, reserve=self._budget + self._opts.max_new_tokens)
            load_row(0, RowKV(tuple(flat[:saved.cached]), saved.kv), saved.cached)
            self._cached = saved.cached

    # -- turns ---------------------------------------------------------------------------------
    def send(self, user_text: str, **options: Any) -> str:
        return "".join(self.stream(user_text, **options))

    def stream(self, user_text: str, **options: Any) -> Iterator[str]:
        """The reply to one user turn, as text pieces. Arguments are checked here, before any piece."""
        opts = self.check_options(**options)
        new = self._model.encode_turn(user_text)
        fits_context(len(new), opts.max_new_tokens, self._limit)
        with self._lock:
            self._finish_active()
            gen = self._turn(new, opts)
            self._active = weakref.ref(gen)
        return gen

    @property
    def options(self) -> SamplingOptions:
        """The options of this chat's replies (a turn's own keyword options go over them for that turn)."""
        return self._opts

    def set_options(self, **options: Any) -> SamplingOptions:
        """Change this chat's options for its next replies (checked; kept by save())."""
        self._opts = self.check_options(**options)
        return self._opts

    def check_options(self, **options: Any) -> SamplingOptions:
        """This chat's options with `options` over them, checked (a REPL's /set asks before it keeps one)."""
        opts = self._model.options(**{**self._opts.__dict__, **options}) if options else self._opts
        if opts.top_logprobs is not None:
            raise UsageError("a chat's replies are text: top_logprobs needs generate() (or the server's "
                             "logprobs)", "top_logprobs")
        return opts

    def _finish_active(self) -> None:
        """End the previous turn's stream if it was left unfinished (it keeps its partial reply)."""
        gen = self._active() if self._active is not None else None
        self._active = None
        if gen is None:
            return
        try:
            gen.close()
        except ValueError:  # "generator already executing": another thread is generating that turn
            raise RuntimeError("this chat is answering another turn in another thread: a ChatSession serves "
                               "one turn at a time; use one chat per conversation") from None

    def _fit(self, new: list[int], opts: SamplingOptions) -> bool:
        """Drop the oldest whole turns until history + new turn fit the budget, and with the reply the
        context. True when turns were dropped (positions shift: the cache must be recomputed)."""
        dropped = False
        while self._turns:
            held = sum(map(len, self._turns))
            if held + len(new) <= self._budget and held + len(new) + opts.max_new_tokens <= self._limit:
                break
            self._turns.pop(0)
            dropped = True
        return dropped

    def _reranked(self, history: list[int], prompt: list[int], opts: SamplingOptions,
                  reply: list[int]) -> Generator[str, None, None]:
        """An MMI turn: this chat's cache (the kept history) is forked into one row per candidate, the
        candidates are sampled on top of it as one batch, and the best is fed to this chat's cache (all
        but its last token, as a plain turn leaves it) and said whole."""
        assert self._reranker is not None
        sampling = self._reranker.sampling(opts)
        n = self._reranker.candidates
        fork = self._cache.fork(n, reserve=len(history) + sampling.max_new_tokens)
        try:
            stops = [StopText(self._model.tokenizer, opts.stop) for _ in range(n)]
            cands = sample_with_logprobs(fork, [prompt] * n, sampling, self._model.eos, keep_cache=True,
                                         history=[history] * n, stops=stops, choices=range(n))
        finally:
            fork.release()
        best = self._reranker.rerank(history, [Generation(s.text(), c.ids, c.logprob)
                                               for c, s in zip(cands, stops, strict=True)]).best
        self._cache.prefill([prompt + best.ids[:-1]])
        self.stats["prefilled_tokens"] += len(prompt) + len(best.ids) - 1
        reply.extend(best.ids)
        self.stats["generated_tokens"] += len(best.ids)
        if best.text:
            yield best.text

    def _turn(self, new: list[int], opts: SamplingOptions) -> Generator[str, None, None]:
        before = [list(t) for t in self._turns]
        if self._fit(new, opts):
            self._cached = 0
        flat = [t for turn in self._turns for t in turn]
        if self._cached == 0:
            prompt, keep = flat + new, False
            if self._turns:
                self.stats["recomputes"] += 1
        else:  # only what the cache lacks: the last reply's final token(s) and the new turn
            prompt, keep = flat[self._cached:] + new, True
        reply: list[int] = []
        keep_turn = True
        try:
            if not keep:
                self._cache.reset(1, reserve=self._budget + opts.max_new_tokens)
            if self._reranker is not None:
                yield from self._reranked(flat + new, prompt, opts, reply)
                return
            self.stats["prefilled_tokens"] += len(prompt)
            stop = StopText(self._model.tokenizer, opts.stop)  # the reply's text, cut at a stop string
            # the cache is ours: emptied above when recomputing, so generate_ids must not reset it again
            for ids in generate_ids(self._cache, [prompt], opts, self._model.eos, keep_cache=True,
                                    history=[flat + new], stops=[stop]):
                t = int(ids[0])
                if t < 0:
                    break
                reply.append(t)
                self.stats["generated_tokens"] += 1
                piece = stop.take()
                if piece:
                    yield piece
            tail = stop.flush()
            if tail:
                yield tail
        except GeneratorExit:  # abandoned: keep what was said
            raise
        except BaseException:
            keep_turn = False
            raise
        finally:
            if keep_turn:
                # The cache holds history + new turn + the reply but its last token (nobody needed its
                # logits); a reply cut short (max_new_tokens, Ctrl-C, a stop string, whose tokens stay as the
                # model said them) still ends its turn with EOS, fed at the next turn.
                self._cached = int(self._cache.lengths[0]) if self._cache.batch == 1 else 0
                if not reply or reply[-1] != self._model.eos:
                    reply.append(self._model.eos)
                self._turns += [new, reply]
            else:  # an error mid-turn: the conversation is as before it, the cache is rebuilt next turn
                self._turns = before
                self._cached = 0
