"""MMI reranking mechanics: candidates sampled as one batch, each scored by the backward model's
log p(source | candidate) over the newest source turns read newest first; the best is returned."""

from __future__ import annotations

import numpy as np
import pytest
from checkpoints import ROOT
from tokenizers import AddedToken

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.mmi import MMIOptions, MMIReranker, source_turns
from dialogpt_onnx.runtime.text import encode_dialogue


def test_source_turns_newest_first():
    eos = 9
    assert source_turns([1, 2, eos, 3, eos, 4, 5, eos], eos, 2) == [4, 5, eos, 3, eos]
    assert source_turns([1, 2, eos, 3], eos, 1) == [3, eos]  # a last turn without its EOS gets one
    assert source_turns([1, eos], eos, 5) == [1, eos]


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_rerank_returns_the_candidate_the_backward_model_prefers(exported, backward_dir, topical_contexts, reduce):
    fwd, bwd = runtime.load(exported("int8")), runtime.load(backward_dir)
    mmi = MMIReranker(fwd, bwd, MMIOptions(candidates=6, reduce=reduce, source_turns=2))
    prompt = encode_dialogue(fwd.tokenizer, topical_contexts[1][:3], fwd.eos)
    out = mmi.reply(prompt, seed=5, max_new_tokens=8)
    assert len(out.candidates) == 6 and out.best is out.candidates[0].generation
    source = source_turns(prompt, fwd.eos, 2)
    for c in out.candidates:  # each score is the backward model's own figure for (candidate -> source)
        reply = c.generation.ids if c.generation.ids[-1:] == [fwd.eos] else [*c.generation.ids, fwd.eos]
        lp = bwd.score(reply, source).token_logprobs
        expect = np.mean(lp) if reduce == "mean" else np.sum(lp)
        assert c.score == pytest.approx(expect, abs=1e-4)
    assert [c.score for c in out.candidates] == sorted((c.score for c in out.candidates), reverse=True)
    # the forward weight mixes in the candidates' own log-probabilities
    mixed = MMIReranker(fwd, bwd, MMIOptions(candidates=6, reduce=reduce, forward_weight=1.0, source_turns=2))
    again = mixed.rerank(prompt, [c.generation for c in out.candidates])
    for c in again.candidates:
        n = len(c.generation.ids) if reduce == "mean" else 1
        bwd_part = c.backward.sum_logprob / (len(c.backward.token_logprobs) if reduce == "mean" else 1)
        assert c.score == pytest.approx(bwd_part + c.generation.logprob / n, abs=1e-6)


def test_incompatible_backward_model_and_bad_options(exported, backward_dir):
    fwd, bwd = runtime.load(exported("fp32")), runtime.load(backward_dir)
    bwd.tokenizer.add_tokens([AddedToken("<|new|>", special=True)])
    with pytest.raises(ValueError, match="another tokenizer"):
        MMIReranker(fwd, bwd)
    bwd = runtime.load(backward_dir)
    for bad, match in [({"candidates": 0}, "candidates"), ({"reduce": "max"}, "reduce"),
                       ({"source_turns": 0}, "source_turns"), ({"forward_weight": float("nan")}, "forward_weight")]:
        with pytest.raises(ValueError, match=match):
            MMIReranker(fwd, bwd, MMIOptions(**bad))
    with pytest.raises(ValueError, match="no candidates"):
        MMIReranker(fwd, bwd).rerank([1, 2], [])


def test_mmi_through_generate_and_chat(exported, backward_dir, topical_contexts):
    mmi = MMIReranker.load(exported("int8"), backward_dir, MMIOptions(candidates=4))
    model = mmi.forward
    g = mmi.generate("Do you like movies?", seed=2, max_new_tokens=8)
    assert len(g.candidates) == 4 and g.ids == g.candidates[0].generation.ids
    assert g.candidates[0].score == max(c.score for c in g.candidates)
    chat = mmi.chat(seed=2, max_new_tokens=8, max_history_tokens=model.max_length)
    for text in topical_contexts[2][:3]:
        reply = chat.send(text)
        # the chosen reply is what the reranker picks for the same history, and it joins the history
        history = [t for turn in chat.turns[:-1] for t in turn]
        best = mmi.reply_ids(history, model.options(seed=2, max_new_tokens=8)).best
        assert reply == best.text and chat.turns[-1] == (best.ids if best.ids[-1:] == [model.eos]
                                                         else [*best.ids, model.eos])
    # candidates branch from the chat's cache: the history was prefilled once, never recomputed
    assert chat.stats["recomputes"] == 0
    assert sum(map(len, chat.turns)) - 2 <= chat.stats["prefilled_tokens"] < sum(map(len, chat.turns))
    # the model chats with its own reranker only, and generate() takes no reranking arguments
    other = runtime.load(exported("int8"))
    with pytest.raises(ValueError, match="forward model is another model"):
        other.chat(reranker=mmi)
    with pytest.raises(ValueError, match="unknown generation option"):
        other.generate("Hi", rerank="mmi")


def test_mmi_from_the_cli(exported, backward_dir):
    import subprocess
    import sys

    root = ROOT
    run = [sys.executable, "-m", "dialogpt_onnx.runtime", "generate", str(exported("int8")), "Do you like movies?",
           "--max-new-tokens", "8", "--seed", "2"]
    ok = subprocess.run([*run, "--rerank", "mmi", "--backward", str(backward_dir), "--mmi-candidates", "4"],
                        capture_output=True, text=True, timeout=300, cwd=root)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr[-1500:]
    mmi = MMIReranker.load(exported("int8"), backward_dir, MMIOptions(candidates=4))
    assert ok.stdout.rstrip("\n") == mmi.generate("Do you like movies?", seed=2, max_new_tokens=8).text
    missing = subprocess.run([*run, "--rerank", "mmi"], capture_output=True, text=True, timeout=300, cwd=root)
    assert missing.returncode == 2 and "needs a backward model" in missing.stderr and "Traceback" not in missing.stderr
