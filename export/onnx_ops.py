"""A thin graph writer: one helper call per ONNX node, node names as paths (`/model/layers.0/attn/qkv`)
so a graph viewer reads like the model. Builders stay pure functions of (writer, weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class GraphWriter:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const_i64(self, name: str, values: list[int]) -> str:
        return self.weight(name, np.asarray(values, dtype=np.int64))

    def input(self, name: str, elem: int, shape: list[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape: list[Any]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, outputs: list[str] | None = None,
           domain: str = "", **attrs: Any) -> list[str]:
        """Add one node; outputs default to `<name>/output_<k>`. Returns the output names."""
        assert name not in self._names, f"duplicate node name {name}"
        self._names.add(name)
        outs = outputs or [f"{name}/output_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], name: str, **kw: Any) -> str:
        return self.op(op_type, inputs, name, **kw)[0]

    def model(self, graph_name: str, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name=producer,
        )
        model.ir_version = 8
        return model


PROTOBUF_LIMIT = 2_000_000_000  # bytes: larger models keep their weights in external data
EXTERNAL_DATA_FILE = "model.onnx.data"


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights, about the size of the saved model."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def is_big(model: onnx.ModelProto) -> bool:
    return model_bytes(model) > PROTOBUF_LIMIT


def save_model(model: onnx.ModelProto, path: str | Path, big: bool | None = None) -> None:
    """Save, with weights in `<name>.data` beside it when the model exceeds protobuf's 2 GB."""
    path = Path(path)
    if is_big(model) if big is None else big:
        location = EXTERNAL_DATA_FILE if path.name == "model.onnx" else f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        (path.parent / location).chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only
    else:
        onnx.save_model(model, str(path))


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
