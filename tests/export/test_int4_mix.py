"""int4's mix is measured per model: the smallest mix within the KL budget of the most faithful one is
written, the manifest says what was tried, and a given mix is honoured."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dialogpt_onnx.export import ExportError, ExportOptions, export_model
from dialogpt_onnx.export.int4_mix import Trial, choose, mix_config
from dialogpt_onnx.export.parity import ParityReport
from dialogpt_onnx.export.pipeline import default_quant
from dialogpt_onnx.export.quantize import fit_to_model

BASE = default_quant("int4")


def _trials(kl: dict[str, float]):
    asked = []

    def trial(name, config):
        asked.append(name)
        return Trial(name, 1000, ParityReport(1, 4, 0.1, 0.01, 1.0, 1.0, 1, kl[name]))

    return trial, asked


@pytest.mark.parametrize("kl, chosen, asked", [
    ({"qkv8": 1.0, "b128": 3.0, "b64": 2.0, "b32": 1.5}, "qkv8", ["qkv8", "b128", "b64", "b32"]),
    ({"qkv8": 1.0, "b128": 3.0, "b64": 1.2, "b32": 1.1}, "b64", ["qkv8", "b128", "b64"]),  # smallest within
    ({"qkv8": 1.0, "b128": 1.25, "b64": 1.0, "b32": 1.0}, "b128", ["qkv8", "b128"]),  # the bound is inclusive
])
def test_the_smallest_mix_within_the_budget_is_chosen(kl, chosen, asked):
    trial, seen = _trials(kl)
    name, record = choose(BASE, 1.25, trial, lambda q: q)
    assert name == record["chosen"] == chosen and seen == asked
    assert [t["mix"] for t in record["tried"]] == asked and record["tried"][0]["kl_ratio"] == 1.0


def test_mixes_a_small_model_makes_equal_are_measured_once():
    """n_embd 64: blocks of 128 shrink to 64, so b128 is b64 there."""
    trial, seen = _trials({"qkv8": 1.0, "b128": 9.0, "b64": 9.0, "b32": 9.0})
    choose(BASE, 1.25, trial, lambda q: fit_to_model(q, 64))
    assert seen == ["qkv8", "b64", "b32"]


def test_mix_configs():
    assert mix_config("qkv8", BASE) == BASE and BASE.eight_bit_layers == ("attn/qkv",)
    assert mix_config("b64", BASE) == replace(BASE, eight_bit_layers=(), block_size=64)
    with pytest.raises(ExportError, match="unknown int4 mix 'b16'"):
        mix_config("b16", BASE)


def test_export_measures_the_mixes_and_writes_the_chosen_one(tmp_path, hf_dir):
    res = export_model(hf_dir, tmp_path / "auto", ExportOptions(variant="int4", progress=False, n_prompts=1,
                                                                 parity_tokens=8))
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    mix = manifest["int4_mix"]
    assert mix == res.int4_mix and [t["mix"] for t in mix["tried"]][0] == "qkv8"
    ref = mix["tried"][0]["mean_kl"]
    within = [t["mix"] for t in mix["tried"][1:] if t["mean_kl"] <= 1.25 * ref]
    assert mix["chosen"] == (within[0] if within else "qkv8")
    written = fit_to_model(mix_config(mix["chosen"], BASE), 64)
    assert manifest["quantization"]["block_size"] == written.block_size
    assert tuple(manifest["quantization"]["eight_bit_layers"]) == written.eight_bit_layers
    assert not any(p.name.startswith("mix-") for p in (tmp_path / "auto").iterdir())  # trials are gone


def test_a_given_mix_is_written_without_trials(tmp_path, hf_dir):
    res = export_model(hf_dir, tmp_path / "b32", ExportOptions(variant="int4", int4_mix="b32", progress=False,
                                                                n_prompts=1, parity_tokens=4))
    manifest = json.loads((tmp_path / "b32" / "manifest.json").read_text())
    assert res.int4_mix == manifest["int4_mix"] == {"chosen": "b32", "rule": "given (--int4-mix)"}
    assert manifest["quantization"]["eight_bit_layers"] == [] and manifest["quantization"]["block_size"] == 32


@pytest.mark.parametrize("opts, phrase", [
    ({"int4_mix": "b16"}, "unknown int4 mix 'b16'"),
    ({"int4_kl_ratio": 0.5}, "int4_kl_ratio"),
])
def test_bad_mix_options_are_refused(tmp_path, hf_dir, opts, phrase):
    with pytest.raises(ExportError, match=phrase):
        export_model(hf_dir, tmp_path / "x", ExportOptions(variant="int4", progress=False, **opts))


def test_mixes_are_measured_on_enough_prompts_whatever_the_parity_settings(tmp_path, hf_dir, monkeypatch):
    """--n-prompts 1 --parity-tokens 4 keeps the final parity check short, not the mix's measurement."""
    import dialogpt_onnx.export.pipeline as pipeline
    from dialogpt_onnx.export.int4_mix import MIX_PROMPTS, MIX_TOKENS

    seen, real = [], pipeline.check_parity

    def recording(reference, model_dir, manifest, prompts, new_tokens, **kw):
        seen.append((model_dir.name, len(prompts), new_tokens))
        return real(reference, model_dir, manifest, prompts, new_tokens, **kw)

    monkeypatch.setattr(pipeline, "check_parity", recording)
    export_model(hf_dir, tmp_path / "m", ExportOptions(variant="int4", progress=False, n_prompts=1, parity_tokens=4))
    trials = [s for s in seen if s[0].startswith("mix-")]
    assert trials and all(n == MIX_PROMPTS and t == MIX_TOKENS for _, n, t in trials)
    assert [s[1:] for s in seen if not s[0].startswith("mix-")] == [(1, 4)]  # the written graph's own check
