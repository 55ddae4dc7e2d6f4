"""model.score(): the log-probability of a reply after a context, equal to transformers' on the same
tokens, through the default (last-logits) export and an --all-logits one, alone and batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dialogpt_onnx import runtime
from dialogpt_onnx.export import ExportOptions, export_model
from dialogpt_onnx.runtime.text import encode_dialogue


@pytest.fixture(scope="module")
def all_logits_dir(tmp_path_factory, hf_dir):
    out = tmp_path_factory.mktemp("all_logits") / "model"
    export_model(hf_dir, out, ExportOptions(variant="fp32", all_logits=True, progress=False, n_prompts=1,
                                            parity_tokens=8))
    return out


def _torch_logprobs(ref, context: list[int], reply: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = ref(torch.tensor([context + reply])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)[len(context) - 1: len(context) + len(reply) - 1]
    return lp[torch.arange(len(reply)), torch.tensor(reply)].numpy()


@pytest.mark.parametrize("graph", ["last", "all"])
def test_scores_equal_transformers(exported, all_logits_dir, tiny, topical_contexts, graph):
    model = runtime.load(exported("fp32") if graph == "last" else all_logits_dir)
    for turns in topical_contexts[:4]:
        context, reply = turns[:-1], turns[-1]
        s = model.score(context, reply)
        ids_c, ids_r = encode_dialogue(model.tokenizer, context, model.eos), model.encode_turn(reply)
        np.testing.assert_allclose(s.token_logprobs, _torch_logprobs(tiny, ids_c, ids_r), atol=1e-4)
        assert len(s.token_logprobs) == len(ids_r) and s.mean_logprob == pytest.approx(s.sum_logprob / len(ids_r))


@pytest.mark.parametrize("source", ["fp32-last", "fp32-all", "int8"])
def test_batched_scores_equal_single(exported, all_logits_dir, topical_contexts, source):
    model = runtime.load({"fp32-last": exported("fp32"), "fp32-all": all_logits_dir,
                          "int8": exported("int8")}[source])
    contexts = [t[:-1] for t in topical_contexts]
    replies = [t[-1] for t in topical_contexts]
    batched = model.score(contexts, replies)
    for c, r, b in zip(contexts, replies, batched, strict=True):
        np.testing.assert_allclose(b.token_logprobs, model.score(c, r).token_logprobs, atol=1e-5)
    # ids work as well as text, and a likelier reply scores higher than the same reply shuffled
    ids = model.encode_turn(replies[0])
    assert model.score(contexts[0], ids).token_logprobs == model.score(contexts[0], replies[0]).token_logprobs


def test_score_bad_input(exported):
    model = runtime.load(exported("fp32"))
    with pytest.raises(TypeError, match="two equally long"):
        model.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="exceeds the context"):
        model.score([1] * 1020, [2] * 10)
    with pytest.raises(ValueError, match="non-empty"):
        model.score([], "hi")


def test_candidates_carry_their_forward_logprob(exported, topical_contexts):
    model = runtime.load(exported("fp32"))
    prompt = encode_dialogue(model.tokenizer, topical_contexts[0][:2], model.eos)
    cands = model.generate(prompt, num_return_sequences=4, do_sample=True, top_k=50, seed=3, max_new_tokens=10)
    assert len(cands) == 4 and len({tuple(c.ids) for c in cands}) > 1  # sampled: not all the same
    for c in cands:  # the generation loop's figure = scoring the same tokens afterwards
        assert c.logprob == pytest.approx(model.score(prompt, c.ids).sum_logprob, abs=1e-3)
    again = model.generate(prompt, num_return_sequences=4, do_sample=True, top_k=50, seed=3, max_new_tokens=10)
    assert [c.ids for c in again] == [c.ids for c in cands]  # seeded
    batch = model.generate([prompt, prompt[:-3]], num_return_sequences=2, do_sample=True, seed=1, max_new_tokens=5)
    assert [len(g) for g in batch] == [2, 2]
    greedy = model.generate(prompt, max_new_tokens=6)
    assert greedy.logprob == pytest.approx(model.score(prompt, greedy.ids).sum_logprob, abs=1e-3)
    with pytest.raises(ValueError, match="needs do_sample"):
        model.generate(prompt, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(prompt, num_return_sequences=0, do_sample=True)
