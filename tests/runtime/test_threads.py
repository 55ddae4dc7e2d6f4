"""One loaded model shared by threads: every reply equals the reply the same call gives alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dialogpt_onnx import runtime

PROMPTS = [
    "Hello, how are you today?", "Do you like music?", "What did you eat for lunch?", "Tell me about dogs.",
    "Have you seen the new movie?", "Where do you live?", "I love the ocean.", "What is your favourite book?",
]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("run", range(3))
def test_generate_from_4_threads_equals_alone(exported, variant, run):
    model = runtime.load(exported(variant), threads=1)
    kw = dict(max_new_tokens=24, min_new_tokens=24)
    alone = {p: model.generate(p, **kw).ids for p in PROMPTS}
    sampled_alone = {p: model.generate(p, do_sample=True, top_k=40, seed=run, **kw).ids for p in PROMPTS}
    start = threading.Barrier(4)

    def worker(w: int) -> list[tuple[str, bool, list[int]]]:
        start.wait()
        out = []
        for i in range(8):  # 4 threads x 8 generations, greedy and seeded sampling interleaved
            p = PROMPTS[(w + i) % len(PROMPTS)]
            sample = (w + i) % 2 == 1
            g = model.generate(p, do_sample=True, top_k=40, seed=run, **kw) if sample else model.generate(p, **kw)
            out.append((p, sample, g.ids))
        return out

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(worker, range(4)) for r in rs]
    assert len(results) == 32
    for p, sample, ids in results:
        assert ids == (sampled_alone[p] if sample else alone[p])


@pytest.mark.parametrize("run", range(2))
def test_chats_in_threads_equal_chats_alone(exported, run):
    """Each thread holds its own ChatSession on one shared model; interleaved turns change nothing."""
    model = runtime.load(exported("fp32"), threads=1)
    scripts = [[PROMPTS[(w + i) % 8] for i in range(5)] for w in range(4)]

    def converse(script: list[str]) -> list[str]:
        chat = model.chat(max_new_tokens=12, max_history_tokens=200, greedy=True)
        return [chat.send(t) for t in script]

    alone = [converse(s) for s in scripts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(converse, scripts))
    assert together == alone


def test_streams_in_threads(exported):
    model = runtime.load(exported("int8"), threads=1)
    alone = {p: "".join(model.stream(p, max_new_tokens=16, min_new_tokens=16)) for p in PROMPTS[:4]}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: "".join(model.stream(p, max_new_tokens=16, min_new_tokens=16)),
                                 PROMPTS[:4]))
    assert together == [alone[p] for p in PROMPTS[:4]]


def test_one_chat_used_by_two_threads_at_once_is_refused(exported):
    """A ChatSession is one conversation: a turn started while another thread is generating on it raises
    RuntimeError, and the first turn finishes untouched."""
    model = runtime.load(exported("fp32"), threads=1)
    chat = model.chat(max_new_tokens=16, min_new_tokens=16)
    inside, release = threading.Event(), threading.Event()
    real = model.graph.ort_session.run_with_iobinding
    calls = [0]

    def slow_run(binding):  # hold the first turn inside its third onnxruntime call
        calls[0] += 1
        if calls[0] == 3:
            inside.set()
            release.wait(10)
        return real(binding)

    model.graph.ort_session.run_with_iobinding = slow_run
    replies: list[str] = []
    errors: list[BaseException] = []
    first = threading.Thread(target=lambda: replies.append(chat.send("Tell me a long story.")))
    first.start()
    assert inside.wait(10)
    try:
        chat.send("Interrupting!")
    except RuntimeError as e:
        errors.append(e)
    release.set()
    first.join(30)
    assert len(errors) == 1 and "one turn at a time" in str(errors[0])
    assert len(replies) == 1 and chat.history == ["Tell me a long story.", replies[0]]
    assert len(chat.turns[1]) == 16 or chat.turns[1][-1] == model.eos


def test_models_of_one_export_share_one_session(exported, tmp_path):
    """Several DialogModels of one export hold one onnxruntime session (one copy of the weights), each its own
    tokenizer (a mutable object); other settings, or the file replaced by a new export, get their own
    session; no session outlives the models that hold it."""
    import gc
    import shutil

    from dialogpt_onnx.runtime import shared

    a, b = runtime.load(exported("int8"), threads=1), runtime.load(exported("int8"), threads=1)
    assert a.graph.ort_session is b.graph.ort_session and a.tokenizer is not b.tokenizer
    assert a.generate("Hello there", max_new_tokens=8).ids == b.generate("Hello there", max_new_tokens=8).ids
    assert runtime.load(exported("int8"), threads=2).graph.ort_session is not a.graph.ort_session
    assert runtime.load(exported("int8"), threads=1, optimization="basic").graph.ort_session is not a.graph.ort_session
    copy = tmp_path / "copy"
    shutil.copytree(exported("int8"), copy)
    first = runtime.load(copy, threads=1)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes())  # replaced in place: a new mtime
    assert runtime.load(copy, threads=1).graph.ort_session is not first.graph.ort_session
    held = len(shared._HELD)
    del a, b, first
    gc.collect()
    assert len(shared._HELD) < held
