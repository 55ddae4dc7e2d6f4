"""The runtime's numpy logits processing equals transformers' logits processors on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import OpenAIPenalties
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from dialogpt_onnx.runtime.sampling import SamplingOptions, process
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID

EOS, VOCAB = EOS_TOKEN_ID, 50257


def _reference(logits: np.ndarray, history: list[int], prompt_len: int, o: SamplingOptions) -> np.ndarray:
    procs = LogitsProcessorList()
    if o.min_new_tokens:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, o.min_new_tokens, EOS))
    if o.logit_bias:
        procs.append(SequenceBiasLogitsProcessor({(t,): b for t, b in o.logit_bias.items()}))
    if o.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(o.repetition_penalty))
    if o.presence_penalty or o.frequency_penalty:
        procs.append(OpenAIPenalties(prompt_len, o.presence_penalty, o.frequency_penalty))
    if o.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(o.no_repeat_ngram_size))
    if o.do_sample:
        if o.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(o.temperature))
        if o.top_k:
            procs.append(TopKLogitsWarper(o.top_k))
        if o.top_p < 1.0:
            procs.append(TopPLogitsWarper(o.top_p))
    out = procs(torch.tensor([history]), torch.tensor(logits[None], dtype=torch.float32))
    return out[0].numpy()


CASES = [
    SamplingOptions(repetition_penalty=1.3),
    SamplingOptions(no_repeat_ngram_size=2),
    SamplingOptions(no_repeat_ngram_size=3, repetition_penalty=1.2),
    SamplingOptions(min_new_tokens=5),
    SamplingOptions(do_sample=True, temperature=0.7),
    SamplingOptions(do_sample=True, top_k=40),
    SamplingOptions(do_sample=True, top_p=0.9),
    SamplingOptions(do_sample=True, top_p=0.5, top_k=100, temperature=1.3, repetition_penalty=1.1,
                    no_repeat_ngram_size=2),
    SamplingOptions(logit_bias={EOS: -100.0, 7: 5.5, 1999: -2.0}),
    SamplingOptions(presence_penalty=0.8),
    SamplingOptions(frequency_penalty=1.5, presence_penalty=-0.5),
    SamplingOptions(do_sample=True, top_k=50, logit_bias={3: 20.0}, repetition_penalty=1.2, frequency_penalty=0.5,
                    min_new_tokens=3),
]


@pytest.mark.parametrize("opts", CASES, ids=lambda o: ",".join(
    f"{k}={v}" for k, v in o.__dict__.items() if v != SamplingOptions().__dict__[k]))
def test_processed_logits_match_transformers(opts):
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
        logits[EOS] = logits.max() + 1  # make the EOS ban matter
        # a repetitive history so n-gram bans and penalties bite
        base = list(rng.integers(0, 2000, 6))
        history = base * 3 + base[:2]
        prompt_len = len(history) - trial  # `trial` tokens generated so far
        ours = process(logits, history, generated=trial, opts=opts, eos=EOS)
        ref = _reference(logits, history, prompt_len, opts)
        finite = np.isfinite(ref)
        assert np.array_equal(np.isfinite(ours), finite)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("opts", "arg"), [
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": float("nan")}, "frequency_penalty"),
    ({"logit_bias": {5: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
    ({"logit_bias": [5, 1]}, "logit_bias"), ({"stop": ("",)}, "stop"), ({"stop": "x"}, "stop"),
    ({"top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": -1}, "top_logprobs")])
def test_new_options_refused_out_of_range(opts, arg):
    from dialogpt_onnx.runtime.errors import UsageError

    with pytest.raises(UsageError, match=arg) as e:
        SamplingOptions(**opts).validate()
    assert e.value.arg == arg
