"""The runtime on exported tiny models: batching, chat cache, streaming, bad model dirs, torch-free import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from checkpoints import ROOT

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.generate import generate_ids
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID, encode_dialogue


def test_ragged_batch_equals_each_prompt_alone(exported, topical_contexts):
    model = runtime.load(exported("fp32"))
    prompts = [encode_dialogue(model.tokenizer, topical_contexts[i][: i + 1], model.eos) for i in range(4)]
    assert len({len(p) for p in prompts}) > 1  # really ragged
    batch = model.generate(prompts, max_new_tokens=24, min_new_tokens=24)
    for p, b in zip(prompts, batch, strict=True):
        assert b.ids == model.generate(p, max_new_tokens=24, min_new_tokens=24).ids


def test_batch_rows_stop_independently(exported):
    model = runtime.load(exported("fp32"))
    out = model.generate(["Hello there", "What is your favourite food?"], max_new_tokens=16)
    for g in out:
        assert len(g.ids) <= 16
        assert EOS_TOKEN_ID not in g.ids[:-1]  # nothing after EOS


def test_chat_keeps_cache_and_matches_full_recompute(exported, topical_contexts):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=12, max_history_tokens=1024, greedy=True)
    turns = [t for c in topical_contexts[:2] for t in c][:4]
    replies = [chat.send(t) for t in turns]
    # the cache was reused: only new tokens were prefilled after the first turn
    total_history = sum(len(t) for t in chat.turns)
    assert chat.stats["recomputes"] == 0
    assert chat.stats["prefilled_tokens"] < total_history
    # same replies as generating each turn from the whole history without a cache
    fresh = runtime.load(exported("fp32"))
    history: list[int] = []
    for user, reply in zip(turns, replies, strict=True):
        history += fresh.encode_turn(user)
        g = fresh.generate(history, max_new_tokens=12)
        assert fresh.decode(g.ids) == reply
        history += g.ids if g.ids and g.ids[-1] == EOS_TOKEN_ID else g.ids + [EOS_TOKEN_ID]


def test_chat_drops_oldest_turns_beyond_budget(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_history_tokens=60, max_new_tokens=8)
    for i in range(12):
        chat.send(f"This is message number {i} about gardening and tomatoes.")
        assert sum(len(t) for t in chat.turns[:-1]) <= 60  # history + new turn; the reply comes on top
    assert chat.stats["recomputes"] > 0
    assert "number 11" in chat.history[-2]


def test_stream_pieces_join_to_text_and_are_clean_utf8(exported):
    model = runtime.load(exported("fp32"))
    pieces = list(model.stream("Ça va? 日本語 😀", max_new_tokens=32, min_new_tokens=32))
    text = "".join(pieces)
    assert text == model.generate("Ça va? 日本語 😀", max_new_tokens=32, min_new_tokens=32).text
    assert all("\ufffd" not in p for p in pieces[:-1])


def test_seeded_sampling_is_reproducible(exported):
    model = runtime.load(exported("int8"))
    kw = dict(do_sample=True, top_k=50, top_p=0.9, temperature=0.8, max_new_tokens=20, seed=7)
    a, b = model.generate("Tell me about dogs", **kw), model.generate("Tell me about dogs", **kw)
    assert a.ids == b.ids
    c = model.generate("Tell me about dogs", **{**kw, "seed": 8})
    assert c.ids != a.ids


def test_a_seed_gives_one_reply_on_every_path(exported):
    """Choice i of n samples with seed + i, and a sampled reply does not depend on the other prompts of its
    batch: generate's n choices, a batch, a stream, a chat turn and the server's engine agree."""
    from dialogpt_onnx.serve.engine import Engine

    model = runtime.load(exported("fp32"))
    kw = dict(do_sample=True, top_k=50, max_new_tokens=12)
    solo = [model.generate("Hello there", seed=7 + i, **kw).ids for i in range(3)]
    assert len(set(map(tuple, solo))) > 1  # the seeds differ in what they give
    assert [g.ids for g in model.generate("Hello there", num_return_sequences=3, seed=7, **kw)] == solo
    batch = model.generate(["What do you do for fun?", "Hello there"], seed=7, **kw)
    assert batch[1].ids == solo[0]  # the other prompt of its batch changes nothing
    assert "".join(model.stream("Hello there", seed=7, **kw)) == model.decode(solo[0])
    assert model.chat(seed=7, no_repeat_ngram_size=0, **kw).send("Hello there") == model.decode(solo[0])
    engine = Engine(model, max_batch=4)
    try:
        reqs = [engine.submit("Hello there", choice=i, seed=7, **kw) for i in range(3)]
        assert [list(r.tokens()) for r in reqs] == solo
    finally:
        engine.close()


def test_runtime_works_without_torch_transformers_optimum(exported):
    """Embedded apps ship without torch: importing it must not be needed for a chat."""
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'optimum'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from dialogpt_onnx import runtime
chat = runtime.load({str(exported('int8'))!r}).chat(max_new_tokens=8)
print(repr(chat.send('Hello!')))
print(repr(chat.send('How are you?')))
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_kv_capacity_grows_without_changing_results(exported):
    model = runtime.load(exported("fp32"))
    long_prompt = [int(t) for t in np.random.default_rng(0).integers(100, 5000, 150)]
    opts = model.options(max_new_tokens=20, min_new_tokens=20)
    grown = model.graph.new_cache()
    assert grown.capacity == 0
    ids = [int(t[0]) for t in generate_ids(grown, [long_prompt], opts, model.eos)]
    assert grown.capacity >= 170
    big = model.graph.new_cache()
    big.reset(1, reserve=1024)  # one big buffer from the start
    same = [int(t[0]) for t in generate_ids(big, [long_prompt], opts, model.eos, keep_cache=True)]
    assert big.capacity == 1024 and same == ids == model.generate(long_prompt, **opts.__dict__).ids


def _rss_mb() -> float:
    """RSS after the allocator handed back what is free: what the process holds, not the heap's slack (the
    runtime trims at load, so a test in a long pytest process would otherwise count regrowth into it)."""
    from dialogpt_onnx.runtime.memory import release_freed_memory

    release_freed_memory()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


@pytest.mark.slow
def test_memory_flat_over_1000_turn_chat(exported):
    model = runtime.load(exported("int8"))
    chat = model.chat(max_history_tokens=256, max_new_tokens=8)
    for i in range(100):  # warm-up: buffers reach their final capacity, histories start to be cut
        chat.send(f"Turn {i}: tell me something about the weather today.")
    before = _rss_mb()
    for i in range(900):
        chat.send(f"Turn {i}: and what about tomorrow, will it rain?")
    growth = _rss_mb() - before
    assert len(chat.turns) < 40 and sum(map(len, chat.turns[:-1])) <= 256
    assert growth < 10, f"RSS grew {growth:.1f} MB over 900 turns"


def test_fork_gives_every_row_the_history(exported, topical_contexts):
    """A forked cache's rows continue exactly as the one-row cache would (MMI candidates branch from a
    chat's kept history this way)."""
    import numpy as np

    for variant in ("fp32", "int8"):
        model = runtime.load(exported(variant))
        prompt = model.encode_turn(topical_contexts[0][0])
        one = model.graph.new_cache()
        one.reset(1)
        one.prefill([prompt[:-2]])
        forked = one.fork(3, reserve=64)
        want = one.prefill([prompt[-2:]])[0]
        got = forked.prefill([prompt[-2:]] * 3)
        for row in got:
            np.testing.assert_allclose(row, want, atol=1e-4)


def test_the_python_chat_uses_the_chat_defaults(exported):
    """model.chat() replies as generate() with runtime.CHAT_DEFAULTS (the CLI's and the server's tests check
    theirs against the same), greedy=True as plain greedy; the bundled checkpoint's generation_config.json
    states the same defaults to transformers users."""
    import json

    model = runtime.load(exported("int8"))
    text = "Hi! Do you like music?"
    sampled = model.chat(seed=3, max_new_tokens=12).send(text)
    assert sampled == model.generate(text, **runtime.chat_options(seed=3, max_new_tokens=12)).text
    assert model.chat(greedy=True, max_new_tokens=12).send(text) == model.generate(text, max_new_tokens=12).text
    assert runtime.chat_options()["do_sample"] and runtime.chat_options(greedy=True)["do_sample"] is False
    shipped = json.loads((ROOT / "models" / "chat-8x256" / "generation_config.json").read_text())
    assert {k: shipped[k] for k in runtime.CHAT_DEFAULTS} == runtime.CHAT_DEFAULTS


def test_sessions_bound_their_spinning(exported):
    """Idle intra-op threads spin at most ort_graph.SPIN_DURATION_US (decode beside busy processes,
    docs/benchmarks.md): the loaded session carries it, whatever path loaded it."""
    from dialogpt_onnx.runtime import ort_graph

    model = runtime.load(exported("int8"), threads=2)
    so = model.graph.ort_session.get_session_options()
    assert ort_graph.SPIN_DURATION_US is not None
    assert so.get_session_config_entry("session.intra_op.spin_duration_us") == str(ort_graph.SPIN_DURATION_US)
    assert so.intra_op_num_threads == 2
