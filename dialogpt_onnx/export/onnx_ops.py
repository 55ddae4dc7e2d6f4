"""The one place graphs are built and edited: one helper call per ONNX node, node names as paths
(`/model/layers.0/attn/qkv`) so a graph viewer reads like the model. The builder (graph.py), the
quantization passes (quantize.py) and the portable graph's post-processing (portable.py) all go through
GraphEditor; `model()` orders the nodes and drops initializers nothing reads any more; `save()` writes that
model one tensor at a time.

Weights stay numpy arrays until written (the builder's are the checkpoint's own arrays, not copies): a
ModelProto holds every weight as bytes and serializing it makes one more copy, which is how an export once
peaked at ~4x its fp32 weights (docs/footprint.md, "Export memory").
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dialogpt_onnx.runtime.batched_graph import encode_varint

MS_DOMAIN = "com.microsoft"
OPSET = 17
Tensor = np.ndarray | onnx.TensorProto  # an initializer: an array until written, or as read from a model


class GraphEditor:
    """Nodes, initializers and I/O of one graph, built from scratch or loaded from a model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, Tensor] = {}
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
        t = self.initializers[name]
        return t if isinstance(t, np.ndarray) else numpy_helper.to_array(t)

    def shape(self, name: str) -> tuple[int, ...]:
        t = self.initializers[name]
        return tuple(t.shape) if isinstance(t, np.ndarray) else tuple(t.dims)

    def nbytes(self) -> int:
        """Bytes of the weights the graph reads: about the size of the saved model."""
        return sum(_nbytes(self.initializers[name]) for name in self._used())

    def node(self, name: str) -> onnx.NodeProto:
        return next(n for n in self.nodes if n.name == name)

    def find(self, op_type: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op_type]

    # -- writing -------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = np.ascontiguousarray(array)  # the caller's own array where it is contiguous
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

    def _used(self) -> list[str]:
        read = {i for n in self.nodes for i in n.input}
        return [name for name in self.initializers if name in read]

    def model(self, graph_name: str = "dialogpt", producer: str = "dialogpt-onnx") -> onnx.ModelProto:
        """The whole model in memory, weights as bytes (for onnxruntime's own quantizers and small graphs)."""
        return self._model([_tensor(n, self.initializers[n]) for n in self._used()], graph_name, producer)

    def _model(self, inits: list[onnx.TensorProto], graph_name: str, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(_toposort(self.nodes, self.inputs, set(self._used())), graph_name, self.inputs,
                                  self.outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()],
                                  producer_name=producer)
        # onnx 1.23 writes IR 11 by default, newer than some onnxruntime builds read: pin what the ops need
        model.ir_version = 10 if self.opsets.get("", 0) >= 21 else 8
        if self._source is not None:
            model.ir_version = max(model.ir_version, self._source.ir_version)
            model.producer_name = self._source.producer_name or producer
        return model

    def save(self, path: str | Path, external: bool | None = None) -> None:
        """Write what `model()` holds, one tensor at a time: each weight goes from its array to the file.
        Weights go to `<name>.data` beside it past protobuf's 2 GB (or when `external`). By hand because
        onnx.save_model serializes the whole ModelProto in memory first."""
        path = Path(path)
        names = self._used()
        if external is None:
            external = sum(_nbytes(self.initializers[n]) for n in names) > PROTOBUF_LIMIT
        location = EXTERNAL_DATA_FILE if path.name == "model.onnx" else f"{path.name}.data"
        skeleton = self._model([], "dialogpt", "dialogpt-onnx")
        graph = skeleton.graph.SerializeToString()  # nodes and I/O: every field but the initializers
        skeleton.ClearField("graph")
        with open(path, "wb") as f, (open(path.parent / location, "wb") if external else nullcontext()) as data:
            pieces = [_TensorPiece(n, self.initializers[n], location, data) for n in names]
            f.write(skeleton.SerializeToString())
            f.write(_GRAPH_TAG + encode_varint(len(graph) + sum(p.size for p in pieces)) + graph)
            for p in pieces:
                p.write(f)


def _toposort(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              initializers: set[str]) -> list[onnx.NodeProto]:
    """Order nodes so each comes after its producers, keeping the given order where it already holds."""
    known = {i.name for i in inputs} | initializers | {""}
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
# an export keeps its weights in external data above this: onnxruntime then maps them, where an inline model
# is read, copied by the loader's edit (runtime.batched_graph) and parsed (DialoGPT-medium fp32: export peak
# 5966 MB inline, see docs/footprint.md)
EXTERNAL_ABOVE = 1_000_000_000
EXTERNAL_DATA_FILE = "model.onnx.data"
# protobuf wire tags (field number << 3 | 2, length-delimited): ModelProto.graph, GraphProto.initializer,
# TensorProto.raw_data. Fields may come in any order on the wire, so the initializers follow the rest.
_GRAPH_TAG, _INITIALIZER_TAG, _RAW_DATA_TAG = b"\x3a", b"\x2a", b"\x4a"
_ALIGN = 4096  # external tensors start on a page boundary, so onnxruntime can map them


def _nbytes(t: Tensor) -> int:
    return int(t.nbytes) if isinstance(t, np.ndarray) else len(t.raw_data) or t.ByteSize()


def _tensor(name: str, t: Tensor) -> onnx.TensorProto:
    return numpy_helper.from_array(t, name) if isinstance(t, np.ndarray) else t


class _TensorPiece:
    """One initializer as GraphProto field bytes: a header, then the raw bytes straight from the array; or,
    external, a header naming where in the data file they went (written when the piece is made)."""

    def __init__(self, name: str, t: Tensor, location: str, data: BinaryIO | None) -> None:
        if isinstance(t, onnx.TensorProto) and not t.raw_data:  # typed fields, as onnx writes some constants
            t = numpy_helper.to_array(t)
        header = onnx.TensorProto()
        if isinstance(t, np.ndarray):
            arr = np.ascontiguousarray(t if sys.byteorder == "little" or t.dtype.itemsize == 1 else t.byteswap())
            header.name, header.data_type = name, helper.np_dtype_to_tensor_dtype(arr.dtype)
            header.dims.extend(arr.shape)
            raw = arr.reshape(-1).view(np.uint8).data  # the array's own bytes, not a copy
        else:
            header.CopyFrom(t)
            header.ClearField("raw_data")
            raw = memoryview(t.raw_data)
        self.raw: memoryview | None = raw
        if data is not None and len(raw) >= 1024:  # onnx's size_threshold: small tensors stay inline
            data.write(b"\0" * (-data.tell() % _ALIGN))
            start = data.tell()
            data.write(raw)
            header.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(start)), ("length", str(len(raw)))):
                header.external_data.add(key=key, value=value)
            self.raw = None
        self.header = header.SerializeToString()
        body = len(self.header)
        if self.raw is not None:
            body += len(_RAW_DATA_TAG) + len(encode_varint(len(self.raw))) + len(self.raw)
        self.prefix = _INITIALIZER_TAG + encode_varint(body)
        self.size = len(self.prefix) + body  # the whole field, as the graph's length counts it

    def write(self, f: BinaryIO) -> None:
        f.write(self.prefix + self.header)
        if self.raw is not None:
            f.write(_RAW_DATA_TAG + encode_varint(len(self.raw)))
            f.write(self.raw)


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights, about the size of the saved model."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def is_big(model: onnx.ModelProto) -> bool:
    return model_bytes(model) > PROTOBUF_LIMIT


def save_model(model: onnx.ModelProto, path: str | Path, big: bool | None = None) -> None:
    """Save a ModelProto, with weights in `<name>.data` beside it when the model exceeds protobuf's 2 GB."""
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
