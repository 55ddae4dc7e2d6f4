"""The batching engine: concurrent requests share decode steps and each gets the reply it gets alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import contexts_ids, load_form

from dialogpt_onnx.serve.engine import Engine, EngineClosed, EngineFull

OPTIONS = [{"max_new_tokens": 12}, {"max_new_tokens": 9, "do_sample": True, "top_k": 20, "seed": 4},
           {"max_new_tokens": 7, "do_sample": True, "top_p": 0.8, "temperature": 0.7, "seed": 1},
           {"max_new_tokens": 10, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
           {"max_new_tokens": 14, "min_new_tokens": 14, "logit_bias": {11: 4.0, 13: -3.0}, "presence_penalty": 0.5,
            "frequency_penalty": 0.8, "stop": ("e ", "an")}]


@pytest.fixture(scope="module", params=["fp32", "int8", "int8-universal"])
def model(request, exported):
    """int8-universal: the export as runtimes without GQA's query_seqlens run it (ragged prefill row by row)."""
    variant, _, form = request.param.partition("-")
    return load_form(exported(variant), form or "batched")


@pytest.fixture(scope="module")
def prompts(model, topical_contexts):
    ids = contexts_ids(model, topical_contexts)
    return [p[-(9 + 11 * i):] for i, p in enumerate(ids)] * 2  # 12 requests of ragged lengths


def test_concurrent_requests_equal_solo_replies(model, prompts):
    jobs = [(p, OPTIONS[i % len(OPTIONS)]) for i, p in enumerate(prompts)]
    solo = [model.generate(p, **o).ids for p, o in jobs]
    engine = Engine(model, max_batch=4, prefill_chunk=16)  # fewer rows than requests: rows are reused
    try:
        got: list[list[int] | None] = [None] * len(jobs)

        def client(i: int) -> None:
            got[i] = engine.generate(jobs[i][0], **jobs[i][1]).ids

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert got == solo
        # shared steps: fewer graph calls than the replies' tokens plus their prompt chunks alone
        alone_steps = sum(len(r) + -(-len(p) // 16) - 1 for (p, _), r in zip(jobs, solo, strict=True))
        assert engine.steps < alone_steps
    finally:
        engine.close()


def test_cancel_full_queue_and_close(model, prompts):
    engine = Engine(model, max_batch=1, max_queue=2)
    try:
        first = engine.submit(prompts[0], max_new_tokens=200, min_new_tokens=200)
        next(first.tokens())  # it is running
        waiting = [engine.submit(prompts[1], max_new_tokens=3) for _ in range(2)]
        with pytest.raises(EngineFull, match="retry later"):
            engine.submit(prompts[1], max_new_tokens=3)
        first.cancel()  # its row is freed: the waiting requests run
        assert len(list(first.tokens())) < 200
        for w in waiting:
            assert len(list(w.tokens())) <= 3
        with pytest.raises(ValueError, match="max_new_tokens"):
            engine.submit(prompts[0], max_new_tokens=-1)
        assert list(engine.submit(prompts[0], max_new_tokens=0).tokens()) == []
        long = engine.submit(prompts[0], max_new_tokens=500, min_new_tokens=500)
    finally:
        engine.close()
    with pytest.raises(EngineClosed):
        list(long.tokens())
    with pytest.raises(EngineClosed):
        engine.submit(prompts[0])


def _chats(model, prompts, turns: int) -> list[list[list[int]]]:
    """Per chat, its user turns: four chats of `turns` turns cut from the held-out contexts."""
    return [[prompts[(c + 3 * t) % len(prompts)][-12:] for t in range(turns)] for c in range(4)]


def _run_chats(engine: Engine, chats: list[list[list[int]]], opts: dict) -> list[list[list[int]]]:
    """Each chat's replies, turn by turn, the chats running concurrently; every request carries the
    whole conversation so far, as an OpenAI-style client sends it, and its chat's own tenant."""
    eos = engine.model.eos
    out: list[list[list[int]]] = [[] for _ in chats]

    def client(c: int) -> None:
        history: list[int] = []
        for user in chats[c]:
            history += user
            reply = engine.generate(history, tenant=f"chat {c}", **opts).ids
            out[c].append(reply)
            history += reply if reply[-1:] == [eos] else reply + [eos]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(len(chats))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_chat_sessions_keep_their_kv_between_turns(model, prompts):
    chats = _chats(model, prompts, turns=3)
    opts = {"max_new_tokens": 8, "do_sample": True, "top_k": 20, "seed": 3}
    cold = Engine(model, max_batch=2, prefix_cache_mb=0)  # every turn recomputes the whole history
    warm = Engine(model, max_batch=2, prefill_chunk=16)
    try:
        want = _run_chats(cold, chats, opts)
        assert _run_chats(warm, chats, opts) == want
        assert cold.prefix_cache.hits == 0
        # every chat's turns 2 and 3 found the previous turn's KV: at least its history and reply
        assert warm.prefix_cache.hits >= 8
        assert warm.prefix_cache.reused_tokens >= sum(len(c[0]) + len(c[1]) for c in chats)
        assert len(warm.prefix_cache) == len(chats)  # a chat's later turn replaces its earlier entry
    finally:
        cold.close()
        warm.close()


def test_session_cache_budget_evicts_least_recently_used(model, prompts):
    per_token = model.kv_bytes_per_token
    chats = _chats(model, prompts, turns=2)
    cold = Engine(model, prefix_cache_mb=0)
    engine = Engine(model, max_batch=1, prefix_cache_mb=60 * per_token / 2**20)  # about two short chats
    try:
        want = _run_chats(cold, chats, {"max_new_tokens": 6})
        assert _run_chats(engine, chats, {"max_new_tokens": 6}) == want  # evicted chats are recomputed
        assert 0 < engine.prefix_cache.nbytes <= 60 * per_token
        assert len(engine.prefix_cache) < len(chats)
    finally:
        cold.close()
        engine.close()
    with pytest.raises(ValueError, match="prefix_cache_mb"):
        Engine(model, prefix_cache_mb=-1)


def test_finish_reason_and_logprobs_equal_generate(model, prompts):
    """A request's finish reason and per-token log-probabilities are generate()'s for the same options."""
    engine = Engine(model, max_batch=2)
    try:
        for p, o in zip(prompts[:4], OPTIONS[-2:] * 2, strict=True):
            want = model.generate(p, **o, top_logprobs=3)
            req = engine.submit(p, **o, top_logprobs=3)
            assert list(req.tokens()) == want.ids and req.finish_reason == want.finish_reason
            assert [(t.token, t.top) for t in req.logprobs] == [(t.token, t.top) for t in want.token_logprobs]
        stopped = [model.generate(p, **OPTIONS[-1]).finish_reason for p in prompts]
        assert "stop" in stopped  # a stop string ended some reply early
    finally:
        engine.close()


def test_a_request_that_fails_ends_alone(model, monkeypatch):
    """A failure while choosing one request's token (a bug in an option's handling) ends that request with
    its error; the engine and the other requests go on."""
    import dialogpt_onnx.runtime.generate as step_module  # the one token step the engine calls

    real = step_module.choose

    def flaky(processed, opts, rng):
        if opts.seed == 13:
            raise ValueError("probabilities contain NaN")
        return real(processed, opts, rng)

    monkeypatch.setattr(step_module, "choose", flaky)
    engine = Engine(model, max_batch=2)
    try:
        bad = engine.submit("Hello", do_sample=True, seed=13, max_new_tokens=4)
        good = engine.submit("Hello", do_sample=True, seed=14, max_new_tokens=4)
        with pytest.raises(ValueError, match="NaN"):
            list(bad.tokens())
        assert list(good.tokens()) == model.generate("Hello", do_sample=True, seed=14, max_new_tokens=4).ids
        assert engine.alive and engine.generate("Hi", max_new_tokens=2).ids
    finally:
        engine.close()


def test_sampling_survives_extreme_options(model):
    """A repetition penalty near 0 makes logits infinite: sampling still picks a token (was a NaN crash)."""
    for opts in ({"repetition_penalty": 3.2e-213}, {"repetition_penalty": 1e-300, "temperature": 0.5, "top_p": 0.9}):
        g = model.generate("Hello hello hello", do_sample=True, seed=1, max_new_tokens=4, **opts)
        assert len(g.ids) >= 1


def test_prefix_cache_lookup_and_store():
    from dialogpt_onnx.serve.prefix_cache import PrefixCache

    row = _kv_row

    cache = PrefixCache(budget_bytes=8 * 10)
    cache.store("a", row([1, 2, 3]))
    cache.store("a", row([1, 2, 3, 4, 5]))  # the same chat, a turn later: replaces its earlier entry
    assert len(cache) == 1
    saved, n = cache.lookup("a", [1, 2, 3, 4, 5])
    assert saved.tokens == (1, 2, 3, 4, 5) and n == 4  # the last prompt token is always fed
    assert cache.lookup("a", [9, 1, 2]) == (None, 0)
    assert cache.lookup("b", [1, 2, 3, 4, 5]) == (None, 0)  # another tenant's rows are not seen
    cache.store("b", row([1, 2, 3]))  # nor replaced by another tenant's shorter row
    assert len(cache) == 2 and cache.lookup("a", [1, 2, 3, 4, 5])[1] == 4
    cache.store("a", row([6, 6, 6]))  # over budget: the least recently used entry goes
    assert len(cache) == 2 and cache.lookup("b", [1, 2, 3, 4])[0] is None
    cache.store("a", row(range(20)))  # larger than the whole budget: not kept
    assert cache.nbytes == 8 * 8


def _kv_row(tokens):
    from dialogpt_onnx.runtime.protocols import RowKV

    return RowKV(tuple(tokens), (np.zeros((1, len(tokens), 2), np.float32),))  # 8 bytes a token


@settings(max_examples=200, deadline=None)
@given(chats=st.lists(st.tuples(st.sampled_from("ab"), st.lists(st.integers(0, 3), min_size=1, max_size=70)),
                      max_size=12),
       prompt=st.lists(st.integers(0, 3), min_size=1, max_size=70), tenant=st.sampled_from("ab"))
def test_prefix_cache_index_finds_what_a_scan_finds(chats, prompt, tenant):
    """The hashed index against a scan of every row: the same tenant only, never more than the real common
    prefix, the scan's best when under BLOCK, never more than BLOCK - 1 tokens short of it, and the same
    entries kept."""
    from dialogpt_onnx.serve.prefix_cache import BLOCK, PrefixCache, common_prefix

    cache, kept = PrefixCache(budget_bytes=8 * 200), {}
    for owner, tokens in chats:
        cache.store(owner, _kv_row(tokens))
        kept = {k: v for k, v in kept.items() if not (k[0] == owner and tokens[:len(k[1])] == list(k[1]))}
        kept[(owner, tuple(tokens))] = len(tokens)
        while sum(kept.values()) > 200:
            del kept[next(iter(kept))]
    assert len(cache) == len(kept)
    best = max((min(common_prefix(k[1], prompt), len(prompt) - 1) for k in kept if k[0] == tenant), default=0)
    saved, n = cache.lookup(tenant, prompt)
    if saved is None:
        assert n == 0 == best
    else:
        assert (tenant, saved.tokens) in kept and 0 < n <= common_prefix(saved.tokens, prompt)
        assert (n == best) if best < BLOCK else (best - (BLOCK - 1) <= n <= best)


def test_prefix_cache_lookup_does_not_scan(monkeypatch):
    """4,000 stored chats of one tenant sharing their first 40 tokens: a lookup compares tokens with at most
    two rows (the index finds them), whatever the number stored."""
    import dialogpt_onnx.serve.prefix_cache as pc

    cache = pc.PrefixCache(budget_bytes=2**30)
    opening = list(range(40))
    for c in range(4000):
        cache.store("a", _kv_row(opening + [100 + c % 50, 200 + c // 50, 7, 8]))
    compared = []
    real = pc.common_prefix
    monkeypatch.setattr(pc, "common_prefix", lambda a, b: compared.append(1) or real(a, b))
    saved, n = cache.lookup("a", opening + [100 + 1234 % 50, 200 + 1234 // 50, 7, 8, 9])
    assert saved.tokens[40:] == (100 + 1234 % 50, 200 + 1234 // 50, 7, 8) and n == 44
    assert len(compared) <= 2
    assert cache.lookup("b", opening + [9]) == (None, 0)


def test_a_prompt_as_long_as_the_buffer_next_to_empty_rows(model):
    """Regression: a fresh engine's first prompt of exactly 64 tokens (the first buffer size) beside idle
    empty rows crashed GroupQueryAttention (an idle row counts one cached token before the padded chunk)."""
    prompt = list(range(1000, 1064))
    engine = Engine(model, max_batch=4)
    try:
        assert engine.generate(prompt, max_new_tokens=4).ids == model.generate(prompt, max_new_tokens=4).ids
        long = list(range(2000, 2300))  # a first chunk of exactly prefill_chunk (256) tokens
        assert engine.generate(long, max_new_tokens=4).ids == model.generate(long, max_new_tokens=4).ids
    finally:
        engine.close()


def test_only_busy_rows_are_computed(model, prompts):
    """A lone chat on a wide engine runs one row per step, not max_batch; rows that finish are packed away
    while others go on, and every reply still equals the request alone."""
    engine = Engine(model, max_batch=8)
    try:
        assert engine.generate(prompts[0], max_new_tokens=6).ids == model.generate(prompts[0], max_new_tokens=6).ids
        assert engine.rows_computed == engine.steps
        jobs = [(prompts[i], {"max_new_tokens": 3 + 4 * i}) for i in range(5)]  # ragged ends: rows leave early
        reqs = [engine.submit(p, **o) for p, o in jobs]
        got = [list(r.tokens()) for r in reqs]
        assert got == [model.generate(p, **o).ids for p, o in jobs]
        assert engine.rows_computed < 5 * engine.steps
    finally:
        engine.close()


def test_rows_fed_nothing_keep_their_kv_and_any_run_of_rows_can_run_alone(model, prompts):
    """The engine's step relies on both: joining rows are fed nothing in the replying rows' call, and a
    joining row's prompt runs in a call binding that row only."""
    p = [prompts[1], prompts[3], prompts[0]]  # 20, 42 and 9 tokens
    cache = model.graph.new_cache()
    cache.reset(3)
    cache.prefill(p)
    before = cache.save_row(1, p[1])
    cache.prefill([[11], [], [12]])
    after = cache.save_row(1, p[1])  # raises unless row 1 still holds exactly its own tokens
    assert all(np.array_equal(x, y) for x, y in zip(before.kv, after.kv, strict=True))
    alone = model.graph.new_cache()
    alone.reset(1)
    want = alone.prefill([p[1] + [13, 14]])[0]
    got = cache.prefill([[13, 14]], start=1)[0]  # row 1 only, rows 0 and 2 untouched
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert int(np.argmax(got)) == int(np.argmax(want))
    assert cache.lengths.tolist() == [len(p[0]) + 1, len(p[1]) + 2, len(p[2]) + 1]
    with pytest.raises(ValueError, match="rows 2..3"):
        cache.prefill([[1], [2]], start=2)


def test_listeners_hear_every_token_and_a_broken_one_only_cancels_its_request(model, prompts):
    """The server's streams wait on a callback instead of a thread per token (Request.listen / poll)."""
    engine = Engine(model, max_batch=2)
    try:
        want = model.generate(prompts[0], max_new_tokens=8).ids
        req = engine.submit(prompts[0], max_new_tokens=8)
        woke = threading.Semaphore(0)
        req.listen(woke.release)
        got: list[int | None] = []
        while not got or got[-1] is not None:
            woke.acquire(timeout=60)
            got += req.poll()
        assert got == [*want, None]

        def broken() -> None:
            if req2.out.qsize():
                raise RuntimeError("event loop is closed")

        req2 = engine.submit(prompts[1], max_new_tokens=200, min_new_tokens=200)
        req2.listen(broken)
        assert len(list(req2.tokens())) < 200  # cancelled at its first token's callback
        assert engine.generate(prompts[0], max_new_tokens=8).ids == want  # the engine serves on
    finally:
        engine.close()


def test_prefill_groups_join_adjacent_rows_of_similar_length():
    from dialogpt_onnx.serve.engine import _prefill_groups

    chunks = {0: [1] * 30, 1: [1] * 28, 2: [1] * 31, 3: [1] * 5, 5: [1] * 6, 6: [1] * 6}
    # with 0-2, row 3 would pad to 31 (124 slots for 94 tokens): alone; row 4 is not joining: 5 starts anew
    assert _prefill_groups(chunks) == [[0, 1, 2], [3], [5, 6]]
    assert _prefill_groups({}) == []


def test_one_tenant_cannot_reuse_or_detect_anothers_chat(model):
    """The attack on a shared cache: after a victim's chat, an attacker sends a guess of its start. Across
    tenants (or with none) nothing is reused, so neither the counters nor the work done (the time a reply
    takes) tell a right guess from a wrong one; the victim's own next turn still reuses its KV."""
    enc = model.encode_turn
    secret = enc("My bank PIN is 7305 and my name is Carol Jones")
    engine = Engine(model, max_batch=2)
    shared = Engine(model, max_batch=2, share_prefix_cache=True)  # the operator's opt-in: the old behaviour
    try:
        for e in (engine, shared):
            e.generate(secret, tenant="victim" if e is engine else None, max_new_tokens=4)
        right, wrong = enc("My bank PIN is 7305"), enc("My bank PIN is 1111")
        # attackers with a tenant of their own (each new: no cache of theirs to hit), then without one
        for n, (guess, tenant) in enumerate([(right, "a1"), (wrong, "a2"), (right, None), (wrong, None)]):
            hits, computed = engine.prefix_cache.reused_tokens, engine.prompt_tokens_computed
            engine.generate(guess, tenant=tenant, max_new_tokens=1)
            assert engine.prefix_cache.reused_tokens == hits, n  # nothing of the victim's KV served it
            assert engine.prompt_tokens_computed - computed == len(guess), n  # the whole guess was computed
        before = engine.prefix_cache.reused_tokens
        engine.generate(secret + enc("ok") + enc("Is it safe?"), tenant="victim", max_new_tokens=2)
        assert engine.prefix_cache.reused_tokens - before >= len(secret)  # the same tenant's next turn hits
        # shared on purpose: the right guess reuses more of the cached chat than the wrong one (what leaked)
        reuse = []
        for guess in (right, wrong):
            before = shared.prefix_cache.reused_tokens
            shared.generate(guess, max_new_tokens=1)
            reuse.append(shared.prefix_cache.reused_tokens - before)
        assert reuse[0] > reuse[1]
    finally:
        engine.close()
        shared.close()
