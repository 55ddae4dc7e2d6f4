"""Row-wise int8 layers on one MatMul, against the fp32 product: the residual row recovers what int8
activations lose, and every row's result stays independent of the rows beside it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dialogpt_onnx.export.onnx_ops import GraphEditor
from dialogpt_onnx.export.quantize import QuantConfig, quantize, rowwise_int8

K, N = 96, 40


def _one_matmul(weight: np.ndarray) -> GraphEditor:
    ed = GraphEditor()
    ed.input("input_ids", onnx.TensorProto.INT64, ["b", "s"])  # the row-wise pass takes [batch, seq] from it
    ed.input("x", onnx.TensorProto.FLOAT, ["b", "s", K])
    ed.output("y", onnx.TensorProto.FLOAT, ["b", "s", N])
    ed.op("MatMul", ["x", ed.weight("w", weight)], "/model/layers.0/mlp/fc/MatMul", outputs=["y"])
    return ed


def _run(model: GraphEditor, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.model().SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"input_ids": np.zeros(x.shape[:2], np.int64), "x": x})[0]


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(3, 5, K)).astype(np.float32)
    x[1, 2] *= 40  # one loud token: its own scale, not its neighbours'
    x[2, 4] = 0  # an all-zero row (scale 0) gives zeros, not NaN
    return weight, x, x @ weight


@pytest.mark.parametrize("reduce_range", [True, False])
def test_the_residual_row_recovers_what_int8_activations_lose(case, reduce_range):
    weight, x, _ = case
    plain = _run(rowwise_int8(_one_matmul(weight), reduce_range), x)
    both = _run(rowwise_int8(_one_matmul(weight), reduce_range, residual_layers=("mlp/fc",)), x)
    assert np.all(np.isfinite(both)) and np.all(both[2, 4] == 0)
    # the weights' rounding is left; the activations' share of the error shrinks ~250-fold
    weights_only = x @ _dequantized(weight, 63 if reduce_range else 127)
    activations_plain, activations_both = (np.abs(y - weights_only).max() for y in (plain, both))
    assert activations_both < activations_plain / 50, (activations_both, activations_plain)


def _dequantized(weight: np.ndarray, levels: int) -> np.ndarray:
    scale = np.abs(weight).max(axis=0) / levels
    return np.round(weight / scale) * scale


def test_a_rows_result_does_not_depend_on_its_neighbours(case):
    weight, x, _ = case
    model = rowwise_int8(_one_matmul(weight), residual_layers=("",))
    together = _run(model, x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            np.testing.assert_array_equal(_run(model, x[b:b + 1, t:t + 1])[0, 0], together[b, t])


def test_residual_rows_are_refused_where_they_mean_nothing():
    with pytest.raises(ValueError, match="residual_layers is for rowwise"):
        quantize(GraphEditor(), QuantConfig("int8", "dynamic", residual_layers=("mlp/",)))
    with pytest.raises(ValueError, match="head_residual is for accuracy_level 4"):
        quantize(GraphEditor(), QuantConfig("int8", "rowwise", accuracy_level=0, head_residual=True))


def test_precise_activations_export_passes_parity_and_says_so(tmp_path, hf_dir):
    """The CLI's --precise-activations: residual rows in the MLP and the head, recorded in the manifest."""
    import json
    import subprocess
    import sys

    from checkpoints import ROOT

    out = tmp_path / "precise"
    proc = subprocess.run([sys.executable, "-m", "dialogpt_onnx.export", str(hf_dir), str(out), "--precise-activations",
                           "--n-prompts", "2", "--parity-tokens", "16", "--verify", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    quant = json.loads((out / "manifest.json").read_text())["quantization"]
    assert quant["residual_layers"] == ["mlp/"] and quant["head_residual"] is True
    ops = [n.name for n in onnx.load(out / "model.onnx").graph.node]
    assert sum(n.endswith("mlp/fc/rowwise/Pair") or n.endswith("mlp/proj/rowwise/Pair") for n in ops) == 2 * 2
    assert not any("attn" in n and n.endswith("rowwise/Pair") for n in ops)
    assert "/lm_head/ReduceSum" in ops
