"""GraphEditor.save writes a model one tensor at a time: what onnx and onnxruntime read back is the model
`model()` holds, inline or with external data, and an export holds each weight once while it is written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from dialogpt_onnx.export.onnx_ops import GraphEditor


def _graph() -> GraphEditor:
    rng = np.random.default_rng(0)
    ed = GraphEditor()
    ed.input("x", onnx.TensorProto.FLOAT, ["n", 300])
    ed.output("y", onnx.TensorProto.FLOAT, ["n", 200])
    w = ed.weight("w", rng.normal(size=(300, 200)).astype(np.float32))  # 240 kB: external when asked
    b = ed.weight("b", rng.normal(size=(200,)).astype(np.float32))
    half = ed.weight("half", np.asarray(0.5, np.float32))  # a 0-d array
    shape = ed.const_i64("shape", [-1, 200])
    # a tensor in typed fields (float_data), as onnx's helpers make some constants
    ed.initializers["bias2"] = helper.make_tensor("bias2", onnx.TensorProto.FLOAT, [200], [0.25] * 200)
    y = ed.op1("MatMul", ["x", w], "mm")
    y = ed.op1("Add", [ed.op1("Add", [y, b], "add"), "bias2"], "add2")
    y = ed.op1("Reshape", [ed.op1("Mul", [y, half], "mul"), shape], "reshape")
    ed.op("Identity", [y], "out", outputs=["y"])
    ed.weight("unread", np.ones(10, np.float32))  # nothing reads it: not written
    return ed


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("external", [False, True])
def test_saved_model_is_the_model_it_holds(tmp_path, external):
    ed = _graph()
    path = tmp_path / "model.onnx"
    ed.save(path, external=external)
    assert (tmp_path / "model.onnx.data").exists() == external
    back, whole = onnx.load(str(path)), ed.model()
    onnx.checker.check_model(back)
    assert [n.SerializeToString() for n in back.graph.node] == [n.SerializeToString() for n in whole.graph.node]
    got, want = _arrays(back), _arrays(whole)
    assert sorted(got) == sorted(want) == ["b", "bias2", "half", "shape", "w"]
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
    assert (back.ir_version, list(back.opset_import)) == (whole.ir_version, list(whole.opset_import))
    if external:
        w = next(t for t in onnx.load(str(path), load_external_data=False).graph.initializer if t.name == "w")
        offset = int(next(e.value for e in w.external_data if e.key == "offset"))
        assert w.data_location == onnx.TensorProto.EXTERNAL and offset % 4096 == 0
    x = np.random.default_rng(1).normal(size=(3, 300)).astype(np.float32)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = (x @ want["w"] + want["b"] + 0.25) * 0.5
    np.testing.assert_allclose(run, expected, rtol=1e-5, atol=1e-4)


def test_the_builder_holds_the_checkpoints_arrays_not_copies(hf_dir):
    from dialogpt_onnx.export.checkpoint import load_checkpoint
    from dialogpt_onnx.export.graph import build_graph

    ckpt = load_checkpoint(hf_dir)
    ed = build_graph(ckpt)
    for name, arr in ckpt.weights.items():
        assert ed.initializers[name] is arr, name


def test_the_reference_model_shares_the_checkpoints_arrays(hf_dir):
    """transformers' model for parity holds no second copy of the weights, and its head stays tied."""
    from dialogpt_onnx.export.checkpoint import load_checkpoint, torch_model

    ckpt = load_checkpoint(hf_dir)
    ref = torch_model(ckpt)
    assert ref.transformer.wte.weight.data_ptr() == ckpt.weights["wte.weight"].ctypes.data
    assert ref.transformer.h[0].mlp.c_fc.weight.data_ptr() == ckpt.weights["h.0.mlp.c_fc.weight"].ctypes.data
    assert ref.lm_head.weight is ref.transformer.wte.weight
