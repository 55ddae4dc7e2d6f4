"""The one place graphs are built and edited: one helper call per ONNX node, node names as paths
(`/model/layers.0/attn/qkv`) so a graph viewer reads like the model. The builder (graph.py), the
quantization passes (quantize.py) and the portable graph's post-processing (portable.py) all go through
GraphEditor; `model()` orders the nodes and drops initializers nothing reads any more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
OPSET = 17


class GraphEditor:
    """Nodes, initializers and I/O of one graph, built from scratch or loaded from a model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.opsets: dict[str, int] = {"": OPSET, MS_DOMAIN: 1}
        self._names: set[str] = set()
        self._source: onnx.ModelProto | None = None

    @classmethod
    def edit(cls, model: onnx.ModelProto) -> GraphEditor:
        ed = cls()
        g = model.graph
        ed.nodes = list(g.node)
        ed.initializers = {t.name: t for t in g.initializer}
        ed.inputs, ed.outputs = list(g.input), list(g.output)
        ed.opsets = {o.domain: o.version for o in model.opset_import}
        ed._names = {n.name for n in g.node}
        ed._source = model
        return ed

    # -- reading -------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def node(self, name: str) -> onnx.NodeProto:
        return next(n for n in self.nodes if n.name == name)

    def find(self, op_type: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op_type]

    # -- writing -------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
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

    def remove(self, node: onnx.NodeProto) -> None:
        """Drop a node (its replacement is added with op(); model() puts every node in order)."""
        self.nodes = [n for n in self.nodes if n is not node]
        self._names.discard(node.name)

    def require_opset(self, version: int, domain: str = "") -> None:
        self.opsets[domain] = max(self.opsets.get(domain, 0), version)

    def model(self, graph_name: str = "dialogpt", producer: str = "dialogpt-onnx") -> onnx.ModelProto:
        used = {i for n in self.nodes for i in n.input}
        inits = [t for name, t in self.initializers.items() if name in used]
        graph = helper.make_graph(_toposort(self.nodes, self.inputs, inits), graph_name, self.inputs,
                                  self.outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()],
                                  producer_name=producer)
        # onnx 1.23 writes IR 11 by default, newer than some onnxruntime builds read: pin what the ops need
        model.ir_version = 10 if self.opsets.get("", 0) >= 21 else 8
        if self._source is not None:
            model.ir_version = max(model.ir_version, self._source.ir_version)
            model.producer_name = self._source.producer_name or producer
        return model


def _toposort(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Order nodes so each comes after its producers, keeping the given order where it already holds."""
    known = {i.name for i in inputs} | {t.name for t in inits} | {""}
    done: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                done.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return done


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
