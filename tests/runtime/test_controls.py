"""Stop strings, logit bias, presence / frequency penalties and per-token log-probabilities in whole
generations, against transformers' generate() on the same weights (greedy: token for token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import TOKENIZER
from reference import EOS, OpenAIPenalties, contexts_ids
from transformers import GPT2TokenizerFast

from dialogpt_onnx import runtime

N = 24


@pytest.fixture(scope="module")
def model(exported):
    return runtime.load(exported("fp32"))


@pytest.fixture(scope="module")
def prompts(model, topical_contexts):
    return contexts_ids(model, topical_contexts[:3])


def _hf(ref, prompt, **kw):
    with torch.no_grad():
        return ref.generate(torch.tensor([prompt]), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                            pad_token_id=EOS, attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            **kw)


def test_stop_strings_end_where_transformers_stops(model, prompts, tiny):
    tok = GPT2TokenizerFast(vocab_file=str(TOKENIZER / "vocab.json"), merges_file=str(TOKENIZER / "merges.txt"))
    checked = 0
    for prompt in prompts:
        full = model.generate(prompt, max_new_tokens=N, min_new_tokens=N)
        text = full.text
        ascii_at = [i for i in range(len(text) // 3, len(text) - 3)
                    if text[i:i + 3].isascii() and text[i:i + 3].strip()]
        if not ascii_at:
            continue
        stop = text[ascii_at[0]:ascii_at[0] + 3]
        ours = model.generate(prompt, max_new_tokens=N, min_new_tokens=N, stop=[stop, "never in this text \x00"])
        assert ours.text == text[: text.index(stop)] and ours.finish_reason == "stop"
        theirs = _hf(tiny, prompt, stop_strings=[stop], tokenizer=tok)[0, len(prompt):].tolist()
        assert ours.ids == theirs  # up to and including the token that completed the stop string
        assert len(ours.ids) < N
        pieces = list(model.stream(prompt, max_new_tokens=N, min_new_tokens=N, stop=stop))
        assert "".join(pieces) == ours.text  # a streamed reply never shows the stop string's start
        checked += 1
    assert checked >= 2
    no_stop = model.generate(prompts[0], max_new_tokens=N, min_new_tokens=N, stop="never in this text \x00")
    assert no_stop.finish_reason == "length" and len(no_stop.ids) == N  # the held tail is given back at the end


def test_batch_rows_stop_at_their_own_stop_string(model, prompts):
    full = model.generate(prompts, max_new_tokens=N, min_new_tokens=N)
    stop = full[0].text[len(full[0].text) // 2:][:2]
    batch = model.generate(prompts, max_new_tokens=N, min_new_tokens=N, stop=stop)
    for f, b, p in zip(full, batch, prompts, strict=True):
        assert b.text == (f.text[: f.text.index(stop)] if stop in f.text else f.text)
        assert b.ids == model.generate(p, max_new_tokens=N, min_new_tokens=N, stop=stop).ids


def test_logprobs_equal_transformers_log_softmax(model, prompts, tiny):
    for prompt in prompts:
        ours = model.generate(prompt, max_new_tokens=N, min_new_tokens=N, top_logprobs=5)
        out = _hf(tiny, prompt, output_logits=True, return_dict_in_generate=True)
        assert ours.ids == out.sequences[0, len(prompt):].tolist()
        assert len(ours.token_logprobs) == N
        for step, tl in enumerate(ours.token_logprobs):
            ref = torch.log_softmax(out.logits[step][0].double(), -1).numpy()
            assert tl.token == ours.ids[step]
            assert tl.logprob == pytest.approx(ref[tl.token], abs=1e-4)
            assert [t for t, _ in tl.top] == np.argsort(-ref, kind="stable")[:5].tolist()
            np.testing.assert_allclose([lp for _, lp in tl.top], np.sort(ref)[::-1][:5], atol=1e-4)
        assert ours.logprob == pytest.approx(sum(t.logprob for t in ours.token_logprobs))
    assert model.generate(prompts[0], max_new_tokens=4).token_logprobs is None  # off unless asked


def test_logit_bias_and_penalties_equal_transformers(model, prompts, tiny):
    from transformers import LogitsProcessorList

    for prompt in prompts:
        first = model.generate(prompt, max_new_tokens=N, min_new_tokens=N).ids
        bias = {first[0]: -100.0, first[1]: 3.0}
        ours = model.generate(prompt, max_new_tokens=N, min_new_tokens=N, logit_bias=bias, presence_penalty=0.7,
                              frequency_penalty=1.1)
        theirs = _hf(tiny, prompt, sequence_bias={(t,): b for t, b in bias.items()},
                     logits_processor=LogitsProcessorList([OpenAIPenalties(len(prompt), 0.7, 1.1)]))
        assert ours.ids == theirs[0, len(prompt):].tolist()
        assert ours.ids != first  # the options bit


def test_out_of_vocabulary_bias_is_refused(model):
    with pytest.raises(runtime.UsageError, match="logit_bias"):
        model.generate("hi", logit_bias={50257: 1.0})


def test_chat_applies_stop_strings_and_refuses_logprobs(model):
    plain = model.chat(max_new_tokens=N, min_new_tokens=N, seed=4)  # the chat defaults, seeded
    full = plain.send("Hello there, how are you?")
    stop = full[len(full) // 2:][:2]
    chat = model.chat(max_new_tokens=N, min_new_tokens=N, stop=stop, seed=4)
    assert chat.send("Hello there, how are you?") == full[: full.index(stop)]
    assert chat.turns[1][-1] == model.eos and len(chat.turns[1]) < N + 1  # the turn ended where the stop came
    assert isinstance(chat.send("And then?"), str)  # the chat goes on
    with pytest.raises(runtime.UsageError, match="top_logprobs"):
        chat.send("hi", top_logprobs=1)
