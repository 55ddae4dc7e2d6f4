"""Quantized layers on one MatMul, against the fp32 product: the residual row recovers what int8
activations lose, every row's result stays independent of the rows beside it, and 4-bit scales stored in
fp16 give the fp32-scale graph's result at half their bytes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dialogpt_onnx.export.onnx_ops import GraphEditor
from dialogpt_onnx.export.quantize import QuantConfig, nbits_layers, quantize, rowwise_int8

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


def _scales_of(model: onnx.ModelProto) -> tuple[str, dict[str, onnx.TensorProto]]:
    """The MatMulNBits' scales input and the model's initializers by name."""
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    return node.input[2], {i.name: i for i in model.graph.initializer}


def test_4bit_scales_stored_in_fp16_give_the_fp32_scales_result(case):
    weight, x, _ = case
    outs, sizes = {}, {}
    for dtype in ("float32", "float16"):
        ed = nbits_layers(_one_matmul(weight), 4, 32, 4, scale_dtype=dtype)
        model = ed.model()
        scales, inits = _scales_of(model)
        if dtype == "float16":  # a Cast of an fp16 initializer feeds MatMulNBits (folded by onnxruntime at load)
            (cast,) = [n for n in model.graph.node if n.output[0] == scales]
            assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == onnx.TensorProto.FLOAT16
        else:
            assert inits[scales].data_type == onnx.TensorProto.FLOAT
        sizes[dtype] = sum(len(t.raw_data) for t in model.graph.initializer)
        outs[dtype] = _run(ed, x)
    assert sizes["float16"] < sizes["float32"] - K // 32 * N * 2 + 1  # every scale's two bytes saved
    scale = np.abs(outs["float32"]).max()
    assert np.abs(outs["float16"] - outs["float32"]).max() < 1e-3 * scale


def test_scales_fp16_cannot_hold_stay_fp32():
    rng = np.random.default_rng(1)
    for factor in (1e9, 1e-12):  # scales above fp16's range, or below its smallest subnormal
        ed = nbits_layers(_one_matmul((rng.normal(size=(K, N)) * factor).astype(np.float32)), 4, 32, 4,
                          scale_dtype="float16")
        scales, inits = _scales_of(ed.model())
        assert inits[scales].data_type == onnx.TensorProto.FLOAT, factor
