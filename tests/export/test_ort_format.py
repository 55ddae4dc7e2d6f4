"""`--format ort`: model.ort (onnxruntime's format for its mobile and minimal builds) and the operators a reduced
build needs, written beside model.onnx and decoding token for token as it does, at every optimization level."""

from __future__ import annotations

import subprocess
import sys

import pytest
from checkpoints import ROOT

from dialogpt_onnx import runtime
from dialogpt_onnx.export import ExportOptions, export_model
from dialogpt_onnx.runtime.manifest import OPTIMIZATION_LEVELS
from dialogpt_onnx.runtime.text import encode_dialogue


@pytest.fixture(scope="module")
def ort_export(tmp_path_factory, hf_dir):
    out = tmp_path_factory.mktemp("ort") / "model"
    export_model(hf_dir, out, ExportOptions(variant="int8", ort_format=True, progress=False, n_prompts=2,
                                            parity_tokens=16))
    return out


def test_model_ort_decodes_as_model_onnx(ort_export, topical_contexts):
    onnx_model = runtime.load(ort_export)
    assert onnx_model.manifest.formats == ("onnx", "ort")
    assert onnx_model.manifest.raw["ort"]["greedy_identical_to_onnx"] == "2/2 prompts x 16 tokens"
    prompts = [encode_dialogue(onnx_model.tokenizer, c, onnx_model.eos) for c in topical_contexts[:3]]
    want = [g.ids for g in onnx_model.generate(prompts, max_new_tokens=24, min_new_tokens=24)]
    for level in OPTIMIZATION_LEVELS:
        ort_model = runtime.load(ort_export, model_format="ort", optimization=level, verify=False)
        assert ort_model.graph.model_format == "ort"
        assert [g.ids for g in ort_model.generate(prompts, max_new_tokens=24, min_new_tokens=24)] == want, level


def test_required_operators_name_the_graphs_ops(ort_export):
    config = (ort_export / "required_operators.config").read_text()
    assert "com.microsoft;1;" in config and "MatMulNBits" in config and "GroupQueryAttention" in config
    assert "/tmp" not in config  # no path of the machine that exported it


def test_an_export_without_ort_says_how_to_get_one(exported):
    with pytest.raises(runtime.UsageError, match="--format ort --overwrite`"):
        runtime.load(exported("int8"), model_format="ort")


def test_cli_format_ort(tmp_path, hf_dir):
    proc = subprocess.run([sys.executable, "-m", "dialogpt_onnx.export", str(hf_dir), str(tmp_path / "m"), "--format",
                           "ort", "--quiet", "--n-prompts", "1", "--parity-tokens", "4"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "model.ort").is_file() and "ort " in proc.stdout  # the stage's seconds
