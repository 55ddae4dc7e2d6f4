"""Continuous batching: requests from any number of threads share one decode step.

Decode reads every weight once per step whatever the batch, so B concurrent replies cost far less than
B single ones. The engine owns one KV cache of `max_batch` rows and a worker thread. In each step the
rows that just joined feed (a chunk of) their prompt, then all replying rows feed their last token in
one shared call (see _step for why apart). Rows join as requests arrive and leave when their reply
ends, without waiting for the others. Every request samples with its own options and random
generator, exactly as generate() would alone; since a row's logits do not depend on the other rows
(fp32 and row-wise int8, see tests/test_invariance.py), each reply equals the same request run alone.
When a reply ends, its row's KV is kept in a PrefixCache (a memory budget, least recently used evicted):
the same chat's next turn, whose prompt starts with that history and reply, prefills only the new turns.

Thread safety: submit() and a Request's methods may be called from any thread; only the worker thread
touches the cache. A full queue raises EngineFull at once instead of building an unbounded backlog.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dialogpt_onnx.runtime import DialogModel, Generation
from dialogpt_onnx.runtime.archive import model_identity
from dialogpt_onnx.runtime.checks import integer, number
from dialogpt_onnx.runtime.errors import UsageError
from dialogpt_onnx.runtime.generate import FinishReason, RowStep
from dialogpt_onnx.runtime.protocols import RowCache
from dialogpt_onnx.runtime.results import TokenLogprob
from dialogpt_onnx.runtime.sampling import SamplingOptions
from dialogpt_onnx.runtime.text import StopText

from .config import DEFAULTS, ServeConfig
from .prefix_cache import PrefixCache, ReplyTokens

_DONE = -1  # end of a request's token stream


class EngineFull(RuntimeError):
    """The engine's queue is full: retry later (a server answers 429 / 503 with Retry-After)."""


class EngineClosed(RuntimeError):
    """The engine was closed before the request finished."""


@dataclass(eq=False)
class Request:
    prompt: list[int]
    opts: SamplingOptions
    tenant: str | None = None  # whose prefix-cache rows it may reuse and add to (None: none, unless opted in)
    choice: int = 0  # which of a request's n choices: it samples with seed + choice (runtime.generate.row_seed)
    owner: str | None = None  # whose statistics it counts in (an API key's id; see Engine.stats_of)
    out: queue.Queue = field(default_factory=queue.Queue)  # token ids, then _DONE
    cancelled: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # with opts.top_logprobs: one per token, appended before the token is put out (read it after the token)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None  # set before _DONE
    # time.monotonic() of the submit, the first and the last token; tokens put out (metrics read them once over)
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_token_at: float | None = None
    emitted: int = 0
    _listener: Callable[[], object] | None = None

    # -- the engine's side ---------------------------------------------------------------------
    def emit(self, token: int) -> None:
        """A new token id, or _DONE (the engine's worker calls this)."""
        if token != _DONE:
            self.last_token_at = time.monotonic()
            self.first_token_at = self.first_token_at or self.last_token_at
            self.emitted += 1
        self.out.put(token)
        if self._listener is not None:
            try:
                self._listener()
            except Exception:  # noqa: BLE001 - e.g. the listener's event loop is closed: nobody is reading
                self._listener = None
                self.cancel()

    # -- the caller's side ---------------------------------------------------------------------
    def listen(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (from the engine's thread, so it must be quick and thread-safe) whenever a
        token arrives; then read them with poll(). An event loop passes `loop.call_soon_threadsafe(...)`
        instead of parking a thread per token in next_token()."""
        self._listener = callback
        callback()  # tokens may have arrived before: the caller polls once at least

    def poll(self) -> list[int | None]:
        """The tokens made since the last call, without blocking; None last once the reply is over."""
        got: list[int | None] = []
        while True:
            try:
                t = self.out.get_nowait()
            except queue.Empty:
                return got
            if t == _DONE:
                self.out.put(_DONE)
                if self.error is not None:
                    raise self.error
                return [*got, None]
            got.append(t)

    def next_token(self) -> int | None:
        """The reply's next token id (blocks until it is made); None once the reply is over."""
        t = self.out.get()
        if t == _DONE:
            self.out.put(_DONE)  # stays over for any later call
            if self.error is not None:
                raise self.error
            return None
        return t

    def tokens(self) -> Iterator[int]:
        """The reply's token ids as they are made (EOS included when generated); blocks between them."""
        while (t := self.next_token()) is not None:
            yield t

    def cancel(self) -> None:
        """Stop this reply: its row is freed at the next step (a client that went away)."""
        self.cancelled.set()


@dataclass(eq=False)
class _Row:
    req: Request
    pending: list[int]  # prompt tokens not yet fed
    step: RowStep  # the runtime's per-row token step: random generator, history, stop text, log-probabilities
    cached: list[int]  # the tokens row's KV holds, in order
    last: int = -1  # token to feed at the next step


class Engine:
    def __init__(self, model: DialogModel, max_batch: int = DEFAULTS.max_batch, max_queue: int = DEFAULTS.max_queue,
                 prefill_chunk: int = DEFAULTS.prefill_chunk, prefix_cache_mb: float = DEFAULTS.prefix_cache_mb,
                 share_prefix_cache: bool = DEFAULTS.share_prefix_cache,
                 prefix_cache_file: str | Path | None = DEFAULTS.prefix_cache_file) -> None:
        """The defaults are ServeConfig's (serve.config). `prefix_cache_file`: restore the prefix cache from
        this file (if it exists) and save it there at close(), so that chats continue across restarts
        without prefilling their history (off by default)."""
        for name, v in (("max_batch", max_batch), ("max_queue", max_queue), ("prefill_chunk", prefill_chunk)):
            integer(name, v, 1)
        number("prefix_cache_mb", prefix_cache_mb, "a number >= 0 (0 turns the cache off)",
               isinstance(prefix_cache_mb, int | float) and prefix_cache_mb >= 0)
        if model.manifest.graph != "contrib":
            raise UsageError("the engine batches the contrib graph (ragged rows in one KV buffer); export "
                             "without --graph portable")
        self.model = model
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        # chats' KV between turns: touched by the worker thread only (its counters may be read anywhere)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
        self.replies = ReplyTokens()  # a text API's replies' ids, by namespace (read and written by any thread)
        # requests that name no tenant reuse no one's KV, unless the operator shares one cache among them all
        self.share_prefix_cache = share_prefix_cache
        self.prefix_cache_file = None if prefix_cache_file is None else Path(prefix_cache_file)
        if self.prefix_cache_file is not None:  # at start, not at shutdown when every cached chat would be lost
            where = self.prefix_cache_file.parent
            if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
                raise UsageError(f"--prefix-cache-file {self.prefix_cache_file}: its directory "
                                 f"{'is not writable' if where.is_dir() else 'does not exist'}: create it (or "
                                 "choose another file)", "prefix_cache_file")
        # one line on what restoring found (a server prints it)
        self.prefix_cache_status = "" if self.prefix_cache_file is None else \
            self.prefix_cache.restore(self.prefix_cache_file, model_identity(model.manifest), model.manifest.shape,
                                      self.replies)
        self.prompt_tokens_computed = 0  # prompt tokens prefilled (those the prefix cache gave are not)
        self._waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._closing = threading.Lock()  # one close() at a time (a signal's and the server's)
        self._closed = False
        self._owners: dict[str, tuple[int, int]] = {}  # owner -> (prefix-cache hits, reused tokens)
        self.failure: BaseException | None = None  # what stopped the worker, if it died (health reports it)
        self.running = 0  # rows generating after the last step (the worker writes it; metrics read it)
        self.steps = 0  # graph calls made (a reply of n tokens alone takes n; shared steps take fewer)
        self.rows_computed = 0  # rows summed over those calls: busy rows only, never the idle ones
        self._thread = threading.Thread(target=self._loop, name="dialogpt-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, model: DialogModel, config: ServeConfig) -> Engine:
        """The engine a server's config asks for."""
        return cls(model, max_batch=config.max_batch, max_queue=config.max_queue, prefill_chunk=config.prefill_chunk,
                   prefix_cache_mb=config.prefix_cache_mb, share_prefix_cache=config.share_prefix_cache,
                   prefix_cache_file=config.prefix_cache_file)

    # -- any thread --------------------------------------------------------------------------------
    def submit(self, prompt: str | list[int], tenant: str | None = None, choice: int = 0,
               sampling: SamplingOptions | None = None, owner: str | None = None, **options: Any) -> Request:
        """Queue one reply; its tokens come from `request.tokens()`. Arguments are checked here. `tenant`
        names whose cached chats the request may reuse (see PrefixCache): an API key's, a client's salt.
        `choice` i of a request's n samples with seed + i. `sampling`: options already typed and checked
        (a server's request), instead of keyword options."""
        if sampling is not None and options:
            raise UsageError(f"give the options as sampling= or as keywords, not both: {sorted(options)}")
        opts = self.model.options(**options) if sampling is None else self.model.checked(sampling)
        integer("choice", choice, 0)
        ids = self.model.prompt_ids(prompt)
        self.model.check_fits(len(ids), opts)
        req = Request(ids, opts, tenant, choice, owner)
        if opts.max_new_tokens == 0:
            req.emit(_DONE)
            return req
        with self._wake:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise EngineFull(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue}): "
                                 "retry later")
            self._waiting.append(req)
            self._wake.notify()
        return req

    def generate(self, prompt: str | list[int], **options: Any) -> Generation:
        """submit() and wait for the whole reply."""
        ids = list(self.submit(prompt, **options).tokens())
        return Generation(self.model.decode(ids), ids)

    @property
    def alive(self) -> bool:
        """The engine takes work: its worker runs and it was not closed (health endpoints report this)."""
        with self._wake:
            return not self._closed and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """What the engine is doing, for /health and load tests (a snapshot; any thread)."""
        with self._wake:
            waiting = len(self._waiting)
        c = self.prefix_cache
        return {"waiting": waiting, "steps": self.steps,
                "prefix_cache": {"chats": len(c), "mb": c.nbytes / 2**20, "budget_mb": c.budget / 2**20,
                                  "hits": c.hits, "reused_tokens": c.reused_tokens}}

    def stats_of(self, owner: str) -> dict[str, int]:
        """One owner's own counters (an API key's): its requests' prefix-cache hits and reused tokens."""
        with self._wake:
            hits, reused = self._owners.get(owner, (0, 0))
        return {"hits": hits, "reused_tokens": reused}

    def close(self) -> None:
        """Stop the worker; unfinished requests end with EngineClosed. Then save the prefix cache to
        prefix_cache_file, if one was given (the worker has ended: nothing else touches the cache). Any
        thread, any number of times: the file is saved once."""
        with self._closing:
            with self._wake:
                self._closed = True
                self._wake.notify()
            self._thread.join()
            if self.prefix_cache_file is not None and self.prefix_cache.budget:
                self.prefix_cache.save(self.prefix_cache_file, model_identity(self.model.manifest), self.replies)
                self.prefix_cache_file = None  # once: a second close() has nothing new to save

    # -- the worker thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        cache = self.model.new_row_cache()
        cache.reset(self.max_batch)
        rows: list[_Row | None] = [None] * self.max_batch
        try:
            while True:
                _pack(cache, rows)  # worker-only state: KV copies happen outside the lock submit() takes
                with self._wake:
                    while not self._closed and not self._waiting and not any(rows):
                        self._wake.wait()
                    if self._closed:
                        break
                    for b in range(self.max_batch):  # join: free rows (after the busy ones) take requests
                        if rows[b] is None and self._waiting:
                            rows[b] = self._join(cache, b, self._waiting.popleft())
                self._step(cache, rows)
                self.running = sum(r is not None for r in rows)
        except BaseException as e:  # a bug or an onnxruntime failure: every caller hears of it
            self.failure = e
            for r in rows:
                if r is not None:
                    r.req.error = e
            raise
        finally:
            with self._wake:
                self._closed = True
                leftover = [r.req for r in rows if r is not None] + list(self._waiting)
                self._waiting.clear()
            for req in leftover:
                req.error = req.error or EngineClosed("the engine was closed before this reply finished")
                req.emit(_DONE)
            cache.release()

    def cache_namespace(self, tenant: str | None) -> str | None:
        """The prefix-cache namespace of a tenant: its own, one for everyone if the operator chose it, or
        none (nothing reused, nothing kept). Whatever else a server remembers per chat uses the same."""
        if tenant is not None:  # hashed: a persisted cache holds no key id or salt
            return "t:" + hashlib.sha256(tenant.encode()).hexdigest()
        return "all" if self.share_prefix_cache else None  # the operator's opt-in: one namespace for everyone

    def _join(self, cache: RowCache, b: int, req: Request) -> _Row:
        tenant = self.cache_namespace(req.tenant)
        saved, n = self.prefix_cache.lookup(tenant, req.prompt) if tenant is not None else (None, 0)
        if saved is None:
            cache.free_row(b)
        else:  # the same chat's earlier turn: its KV is reused, only the new tokens are prefilled
            cache.load_row(b, saved, n)
            if req.owner is not None:
                with self._wake:
                    hits, reused = self._owners.get(req.owner, (0, 0))
                    self._owners[req.owner] = (hits + 1, reused + n)
        stop = StopText(self.model.tokenizer, req.opts.stop) if req.opts.stop else None
        return _Row(req, req.prompt[n:], RowStep(req.opts, self.model.eos, req.prompt, stop, req.choice),
                    list(req.prompt[:n]))

    def _step(self, cache: RowCache, rows: list[_Row | None]) -> None:
        """One step: joining rows prefill (at most `prefill_chunk` prompt tokens in all; adjacent rows
        of similar chunk lengths share a call, see _prefill_groups), then every replying row decodes one
        token in a shared call. Apart, because a call pads its rows to the longest: a 40-token prompt
        beside 7 replying rows would cost 8 x 40 positions, and stall those replies for it (seen as a
        1.4 s TTFT p99 at 8 clients)."""
        busy = max((b + 1 for b, r in enumerate(rows) if r is not None), default=0)
        for b, r in enumerate(rows[:busy]):
            if r is not None and r.req.cancelled.is_set():
                r.req.emit(_DONE)
                rows[b] = None
        replying = [b for b, r in enumerate(rows[:busy]) if r is not None and not r.pending]
        budget, chunks = self.prefill_chunk, {}
        for b, r in enumerate(rows[:busy]):
            if r is None or not r.pending or budget == 0:
                continue
            chunks[b] = r.pending[:budget]
            del r.pending[: len(chunks[b])]
            budget -= len(chunks[b])
            self.prompt_tokens_computed += len(chunks[b])
            r.cached += chunks[b]
        for run in _prefill_groups(chunks):
            logits = cache.prefill([chunks[b] for b in run], start=run[0])
            self._count(len(run))
            for i, b in enumerate(run):
                row = rows[b]
                if row is not None and not row.pending:  # its prompt is in: the reply's first token
                    self._emit(cache, rows, b, logits[i])
        if replying:  # rows in between that are still joining are fed nothing: their KV stays as it is
            hi = replying[-1] + 1
            feed: list[list[int]] = [[] for _ in range(hi)]
            for b in replying:
                row = rows[b]
                assert row is not None
                feed[b] = [row.last]
                row.cached.append(row.last)
            logits = cache.prefill(feed)
            self._count(hi)
            for b in replying:
                self._emit(cache, rows, b, logits[b])

    def _count(self, rows: int) -> None:
        self.steps += 1
        self.rows_computed += rows

    def _emit(self, cache: RowCache, rows: list[_Row | None], b: int, logits: np.ndarray) -> None:
        """Row b's next token from its logits; a finished reply frees the row and keeps its KV."""
        r = rows[b]
        assert r is not None
        try:
            t = r.step.next(logits)
            if r.step.token_logprobs is not None:
                r.req.logprobs.append(r.step.token_logprobs[-1])
        except Exception as e:  # noqa: BLE001 - one request's options (a bug in their handling) end that request only
            r.req.error = e
            r.req.emit(_DONE)
            rows[b] = None
            return
        r.req.emit(t)
        if r.step.finish_reason is not None:
            r.req.finish_reason = r.step.finish_reason
            tenant = self.cache_namespace(r.req.tenant)
            if self.prefix_cache.budget and tenant is not None:
                self.prefix_cache.store(tenant, cache.save_row(b, r.cached))
            r.req.emit(_DONE)
            rows[b] = None
        else:
            r.last = t


def _prefill_groups(chunks: dict[int, list[int]], max_padding: float = 0.25) -> list[list[int]]:
    """Runs of adjacent rows whose chunks go through one call: a call reads every weight once however
    many rows it has (8 separate 30-token prompts read DialoGPT-small's weights 8 times), but pads
    them to the longest, so a row joins a run only while padding stays under `max_padding` of the
    real tokens."""
    runs: list[list[int]] = []
    for b in sorted(chunks):
        if runs and b == runs[-1][-1] + 1:
            widths = [len(chunks[x]) for x in (*runs[-1], b)]
            if max(widths) * len(widths) <= (1 + max_padding) * sum(widths):
                runs[-1].append(b)
                continue
        runs.append([b])
    return runs


def _pack(cache: RowCache, rows: list[_Row | None]) -> None:
    """Move busy rows to the front (the last busy row fills the first free slot, its KV with it), so that
    a step runs the first k rows only."""
    lo, hi = 0, len(rows) - 1
    while True:
        while lo < len(rows) and rows[lo] is not None:
            lo += 1
        while hi >= 0 and rows[hi] is None:
            hi -= 1
        if lo >= hi:
            return
        cache.move_row(hi, lo)
        rows[lo], rows[hi] = rows[hi], None
