"""The batching engine: concurrent requests share decode steps and each gets the reply it gets alone."""

from __future__ import annotations

import threading

import pytest
from reference import contexts_ids

import runtime
from runtime.engine import Engine, EngineClosed, EngineFull

OPTIONS = [{"max_new_tokens": 12}, {"max_new_tokens": 9, "do_sample": True, "top_k": 20, "seed": 4},
           {"max_new_tokens": 7, "do_sample": True, "top_p": 0.8, "temperature": 0.7, "seed": 1},
           {"max_new_tokens": 10, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2}]


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request, exported):
    return runtime.load(exported(request.param))


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
