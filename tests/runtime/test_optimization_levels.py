"""Every exported graph gives the same logits at each of onnxruntime's graph optimization levels from its
manifest's lowest up: a build, an execution provider or a user's session options that skip an optimization
must not get other replies. (Before: without optimizations every int8 / int4 export multiplied its head by
zeros and decoded token 0.) int4 stores its scales in fp16 for onnxruntime to fold: "off" is refused."""

from __future__ import annotations

import numpy as np
import pytest

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.manifest import OPTIMIZATION_LEVELS
from dialogpt_onnx.runtime.text import encode_dialogue

# logits drift by float summation order between fused and unfused kernels; quantized graphs may also move
# an activation's int8 rounding step
TOLERANCE = {"fp32": 1e-4, "int8": 0.05, "int4": 0.05}


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_every_optimization_level_gives_the_same_logits(exported, variant, topical_contexts):
    reference = runtime.load(exported(variant))
    context = encode_dialogue(reference.tokenizer, topical_contexts[0], reference.eos)
    assert reference.graph.optimization == "all" == reference.manifest.optimization
    reply = reference.generate(context, max_new_tokens=16, min_new_tokens=16).ids
    want = np.array(reference.score(context, reply).token_logprobs)
    assert want.std() > 0.1  # not the flat distribution of a zeroed head
    lowest = reference.manifest.lowest_optimization
    assert lowest == ("basic" if variant == "int4" else "off")
    for level in OPTIMIZATION_LEVELS[OPTIMIZATION_LEVELS.index(lowest):]:
        model = runtime.load(exported(variant), optimization=level, verify=False)
        got = np.array(model.score(context, reply).token_logprobs)
        assert np.abs(got - want).max() < TOLERANCE[variant], (level, np.abs(got - want).max())
        assert model.generate(context, max_new_tokens=16, min_new_tokens=16).ids[:4] == reply[:4], level


def test_an_unknown_level_is_one_clear_error(exported):
    with pytest.raises(runtime.UsageError, match="optimization must be one of off, basic, extended, all"):
        runtime.load(exported("fp32"), optimization="max")


def test_a_level_below_the_manifests_lowest_is_one_clear_error(exported):
    with pytest.raises(runtime.UsageError, match=r"needs optimization basic or above .*fp16 scales.*not 'off'"):
        runtime.load(exported("int4"), optimization="off")
