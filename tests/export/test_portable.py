"""The portable graph (--graph portable): standard ONNX ops only, tied weight stored once, run by the runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from reference import assert_greedy_parity

from dialogpt_onnx import runtime
from dialogpt_onnx.export import ExportOptions, export_model


@pytest.fixture(scope="module")
def portable(tmp_path_factory, hf_dir):
    cache = {}

    def get(variant: str):
        if variant not in cache:
            out = tmp_path_factory.mktemp(f"portable_{variant}") / "m"
            export_model(hf_dir, out, ExportOptions(variant=variant, graph="portable", progress=False,
                                                    n_prompts=1, parity_tokens=8))
            cache[variant] = out
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_standard_ops_only_and_tied_once(portable, variant):
    m = onnx.load(str(portable(variant) / "model.onnx"))
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    vocab_sized = [t.name for t in m.graph.initializer if 50257 in t.dims and np.prod(t.dims) >= 50257 * 8]
    assert len(vocab_sized) == 1, vocab_sized
    manifest = json.loads((portable(variant) / "manifest.json").read_text())
    assert manifest["graph"] == "portable" and manifest["io"]["inputs"]["attention_mask"] == "attention_mask"


def test_portable_fp32_matches_transformers(portable, tiny, topical_contexts):
    p = json.loads((portable("fp32") / "manifest.json").read_text())["parity"]
    assert p["max_abs_logit_diff"] <= 1e-3
    assert_greedy_parity(portable("fp32"), tiny, topical_contexts[:2])


def test_portable_ragged_batch(portable):
    # fp32: int8's dynamic activation scales are computed over the whole batch, so rows interact there
    model = runtime.load(portable("fp32"))
    prompts = ["Hello there, how is your day going?", "Hi"]
    batch = model.generate(prompts, max_new_tokens=12, min_new_tokens=12)
    for p, b in zip(prompts, batch, strict=True):
        assert b.ids == model.generate(p, max_new_tokens=12, min_new_tokens=12).ids


def test_portable_int4_runs_and_stays_close(portable):
    model = runtime.load(portable("int4"))
    chat = model.chat(max_new_tokens=6)
    assert isinstance(chat.send("Hello!"), str) and isinstance(chat.send("And then?"), str)
    p = json.loads((portable("int4") / "manifest.json").read_text())["parity"]
    assert p["mean_abs_logit_diff"] < 0.5


def test_portable_fork(portable, topical_contexts):
    model = runtime.load(portable("fp32"))
    prompt = model.encode_turn(topical_contexts[0][0])
    one = model.graph.new_cache()
    one.reset(1)
    one.prefill([prompt[:-2]])
    forked = one.fork(2)
    want = one.prefill([prompt[-2:]])[0]
    for row in forked.prefill([prompt[-2:]] * 2):
        np.testing.assert_allclose(row, want, atol=1e-4)
