"""Quantization passes over the fp32 graph: an explicit config in, a quantized graph out.

- int8: onnxruntime.quantization's dynamic quantization of every layer MatMul (DynamicQuantizeMatMul).
- int4: onnxruntime's MatMulNBits quantizer (block-wise 4-bit weights, accuracy_level 4 = int8 compute).
- both: the tied embedding / lm_head is quantized once (MatMulNBits, `tied_head_bits`) and the
  embedding lookup reads the same tensor through GatherBlockQuantized. Written by hand because
  onnxruntime's quantizers treat the Gather and the head as two tensors and would store them twice.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_ops import MS_DOMAIN, is_big, save_model

EMBED_GATHER = "/model/embed_tokens/Gather"
HEAD_GEMM = "/lm_head/Gemm"


@dataclass(frozen=True)
class QuantConfig:
    variant: str  # "int8" | "int4"
    # "dynamic" (int8 DynamicQuantizeMatMul, one activation scale per tensor) | "rowwise" (int8, one
    # activation scale per token row) | "nbits" (MatMulNBits)
    layer_method: str = "dynamic"
    block_size: int = 32  # MatMulNBits block along K (nbits layers)
    head_bits: int = 8  # the tied embedding / lm_head
    head_block_size: int = 32
    per_channel: bool = False  # int8 dynamic quantization of layer weights
    # int8 layers: 7-bit weights, so AVX2's u8×s8 multiply-add (VPMADDUBSW, int16 pairs) cannot saturate.
    # rowwise without it stores 8-bit weights as uint8 (u8×u8 kernels: exact, slower).
    reduce_range: bool = False
    accuracy_level: int = 4  # MatMulNBits: quantize activations to int8 and use VNNI kernels
    algorithm: str = "rtn"  # nbits layers: "rtn" (round to nearest, asymmetric) | "hqq" (half-quadratic)


def fit_to_model(qc: QuantConfig, n_embd: int) -> QuantConfig:
    """Shrink block sizes that do not divide the hidden size (tiny models): blocks must tile each row."""
    def fit(bs: int) -> int:
        while bs > 16 and n_embd % bs:
            bs //= 2
        return bs

    return replace(qc, block_size=fit(qc.block_size), head_block_size=fit(qc.head_block_size))


@contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO (and a pre-processing hint at WARNING)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize(model: onnx.ModelProto, qc: QuantConfig) -> onnx.ModelProto:
    with quiet():
        return _quantize(model, qc)


def _quantize(model: onnx.ModelProto, qc: QuantConfig) -> onnx.ModelProto:
    model = quantize_tied_head(model, qc.head_bits, qc.head_block_size, qc.accuracy_level)
    bits = {"int8": 8, "int4": 4}.get(qc.variant)
    if bits is None:
        raise ValueError(f"unknown quantized variant {qc.variant!r}")
    if qc.layer_method == "dynamic" and bits == 8:
        return dynamic_int8(model, qc.per_channel, reduce_range=qc.reduce_range)
    if qc.layer_method == "rowwise" and bits == 8:
        return rowwise_int8(model, qc.reduce_range)
    return _nbits(model, bits, qc.block_size, qc.accuracy_level, algorithm=qc.algorithm)


def _nbits(model: onnx.ModelProto, bits: int, block_size: int, accuracy_level: int,
           nodes: list[str] | None = None, algorithm: str = "rtn") -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    if algorithm == "hqq":  # onnxruntime's HQQ quantizer fits scales and zero points (needs torch)
        q = MatMulNBitsQuantizer(model, nodes_to_include=nodes, op_types_to_quantize=("MatMul",),
                                 algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits,
                                                                      op_types_to_quantize=("MatMul",)))
    elif algorithm == "rtn":
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=False,
                                 accuracy_level=accuracy_level, nodes_to_include=nodes,
                                 op_types_to_quantize=("MatMul",))
    else:
        raise ValueError(f"unknown MatMulNBits algorithm {algorithm!r}")
    q.process()
    out = q.model.model
    for node in out.graph.node:  # HQQ leaves accuracy_level unset (fp32 compute)
        if node.op_type == "MatMulNBits":
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = accuracy_level
            if not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
    return out


def dynamic_int8(model: onnx.ModelProto, per_channel: bool = False, op_types: tuple[str, ...] = ("MatMul",),
                 nodes: list[str] | None = None, reduce_range: bool = False) -> onnx.ModelProto:
    """onnxruntime's dynamic quantization (int8 weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = is_big(model)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        save_model(model, src, big)
        quantize_dynamic(src, dst, op_types_to_quantize=list(op_types), per_channel=per_channel,
                         nodes_to_quantize=nodes, weight_type=QuantType.QInt8, use_external_data_format=big,
                         reduce_range=reduce_range,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(dst)


def rowwise_int8(model: onnx.ModelProto, reduce_range: bool = True) -> onnx.ModelProto:
    """int8 layers whose activations are quantized one token row at a time, so a row's result does not
    depend on the other rows of its batch or on how its history was chunked into the KV cache.

    x ─Abs─ReduceMax(last axis)─×1/127─► s [batch, seq, 1]
    x ─QuantizeLinear(s, one block per row, zero point 128)─► uint8 ─MatMulIntegerToFloat(W, per-column
      scale)─×s─► y

    Written by hand: onnxruntime's DynamicQuantizeMatMul / MatMulIntegerToFloat take one activation scale
    per tensor and MatMulInteger rejects per-row zero points. Activations are uint8 with zero point 128
    because int8 ones hit a slow s8×s8 path on AVX2. An all-zero row gets scale 0: its (meaningless)
    integers are multiplied by that 0.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    ids = graph.input[0].name  # [batch, seq]: every layer input is [batch, seq, width]
    consts = [numpy_helper.from_array(np.asarray(1 / 127, np.float32), "rowwise/inv127"),
              numpy_helper.from_array(np.asarray(1.0, np.float32), "rowwise/one"),
              numpy_helper.from_array(np.asarray(128, np.uint8), "rowwise/zero_point"),
              numpy_helper.from_array(np.asarray([-1], np.int64), "rowwise/last_axis")]
    # QuantizeLinear's blocked form wants a zero point per row: one [batch, seq, 1] tensor of 128 serves all
    zero_points = "rowwise/zero_points"
    nodes = [helper.make_node("Shape", [ids], ["rowwise/rows"], name="rowwise/Shape"),
             helper.make_node("Expand", ["rowwise/zero_point", "rowwise/rows"], ["rowwise/zero_points_2d"],
                              name="rowwise/Expand"),
             helper.make_node("Unsqueeze", ["rowwise/zero_points_2d", "rowwise/last_axis"], [zero_points],
                              name="rowwise/Unsqueeze")]
    levels = 63 if reduce_range else 127
    drop, new_inits = set(), []
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(w)
        col_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / levels
        qweight = np.clip(np.round(weight / col_scale), -levels, levels)
        w_inputs = [f"{w.name}/scale"]
        if reduce_range:
            new_inits.append(numpy_helper.from_array(qweight.astype(np.int8), f"{w.name}/int8"))
        else:
            new_inits.append(numpy_helper.from_array((qweight + 128).astype(np.uint8), f"{w.name}/int8"))
            w_inputs += ["rowwise/zero_point"]
        drop.add(w.name)
        new_inits.append(numpy_helper.from_array(col_scale.astype(np.float32), f"{w.name}/scale"))
        n, x = node.name.removesuffix("/MatMul"), node.input[0]
        nodes += [
            helper.make_node("Abs", [x], [f"{n}/abs"], name=f"{n}/rowwise/Abs"),
            helper.make_node("ReduceMax", [f"{n}/abs", "rowwise/last_axis"], [f"{n}/absmax"],
                             name=f"{n}/rowwise/ReduceMax", keepdims=1),
            helper.make_node("Mul", [f"{n}/absmax", "rowwise/inv127"], [f"{n}/row_scale"],
                             name=f"{n}/rowwise/RowScale"),
            helper.make_node("QuantizeLinear", [x, f"{n}/row_scale", zero_points], [f"{n}/x_uint8"],
                             name=f"{n}/rowwise/QuantizeLinear", axis=-1, block_size=int(w.dims[0])),
            helper.make_node("MatMulIntegerToFloat",
                             [f"{n}/x_uint8", f"{w.name}/int8", "rowwise/one", w_inputs[0], "rowwise/zero_point",
                              *w_inputs[1:]], [f"{n}/y_unscaled"],
                             name=f"{n}/rowwise/MatMulIntegerToFloat", domain=MS_DOMAIN),
            helper.make_node("Mul", [f"{n}/y_unscaled", f"{n}/row_scale"], list(node.output),
                             name=f"{n}/rowwise/Mul"),
        ]
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + consts + new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    for op in model.opset_import:  # QuantizeLinear's blocked form (block_size) is opset 21
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, 21)
    model.ir_version = max(model.ir_version, 10)
    return model


def quantize_tied_head(model: onnx.ModelProto, bits: int, block_size: int,
                       accuracy_level: int) -> onnx.ModelProto:
    """Gemm(h, W, transB=1) → MatMulNBits(h, Wq) and Gather(W, ids) → GatherBlockQuantized(Wq, ids)."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    gemm, gather = nodes[HEAD_GEMM], nodes[EMBED_GATHER]
    inits = {t.name: t for t in graph.initializer}
    head_name = gemm.input[1]
    head = numpy_helper.to_array(inits[head_name])  # [vocab, n_embd]
    vocab, n_embd = head.shape

    # Quantize with onnxruntime's own quantizer on a one-node model, then take its tensors.
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", n_embd])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", vocab])
    one = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="head")], "head", [x], [y],
        [numpy_helper.from_array(np.ascontiguousarray(head.T), "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    q = _nbits(one, bits, block_size, accuracy_level)
    qnode = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    qinits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    packed, scales = qinits[qnode.input[1]], qinits[qnode.input[2]]
    zeros = qinits[qnode.input[3]] if len(qnode.input) > 3 and qnode.input[3] else None
    k_blocks = packed.shape[1]
    # GatherBlockQuantized wants scales of the data's rank, MatMulNBits wants them 2-D: store the 3-D
    # ones and let onnxruntime fold a Reshape at load, so the file holds every head tensor once.
    new_inits = [numpy_helper.from_array(packed, "lm_head.qweight"),
                 numpy_helper.from_array(scales.reshape(vocab, k_blocks, 1), "lm_head.scales")]
    head_inputs = [gemm.input[0], "lm_head.qweight", _reshaped(graph, "lm_head.scales", [vocab, k_blocks])]
    gather_inputs = ["lm_head.qweight", gather.input[1], "lm_head.scales"]
    if zeros is not None:
        if bits == 8:  # one byte per block: the same bytes serve both ops
            new_inits.append(numpy_helper.from_array(zeros.reshape(vocab, k_blocks, 1), "lm_head.zero_points"))
            head_inputs.append(_reshaped(graph, "lm_head.zero_points", [vocab, k_blocks]))
        else:  # MatMulNBits packs two 4-bit zero points a byte, GatherBlockQuantized one: small, kept twice
            new_inits.append(numpy_helper.from_array(zeros, "lm_head.zero_points_packed"))
            new_inits.append(numpy_helper.from_array(_unpack4(zeros, k_blocks).reshape(vocab, k_blocks, 1),
                                                     "lm_head.zero_points"))
            head_inputs.append("lm_head.zero_points_packed")
        gather_inputs.append("lm_head.zero_points")
    attrs = {a.name: helper.get_attribute_value(a) for a in qnode.attribute}
    new_head = helper.make_node("MatMulNBits", head_inputs, list(gemm.output), name="/lm_head/MatMulNBits",
                                domain=MS_DOMAIN, **attrs)
    replace = {gemm.name: new_head}
    drop = {head_name}
    if gather.input[0] == head_name:  # tied: the embedding reads the head's quantized tensor
        replace[gather.name] = helper.make_node(
            "GatherBlockQuantized", gather_inputs, ["/model/embed_tokens/blocks"],
            name="/model/embed_tokens/GatherBlockQuantized", domain=MS_DOMAIN,
            bits=bits, block_size=block_size, gather_axis=0, quantize_axis=2)
        graph.node.append(helper.make_node(
            "Reshape", ["/model/embed_tokens/blocks", _const(graph, "/model/embed_tokens/shape", [0, 0, n_embd])],
            list(gather.output), name="/model/embed_tokens/Reshape"))
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    new_nodes = [replace.get(n.name, n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(_toposort(new_nodes, graph))
    return model


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _reshaped(graph: onnx.GraphProto, name: str, shape: list[int]) -> str:
    out = f"{name}/2d"
    graph.node.append(helper.make_node("Reshape", [name, _const(graph, f"{name}/2d_shape", shape)], [out],
                                       name=f"/lm_head/{name}/Reshape"))
    return out


def _unpack4(packed: np.ndarray, n: int) -> np.ndarray:
    """[rows, ceil(n/2)] bytes of two 4-bit values (low nibble first) -> [rows, n] uint8."""
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return np.ascontiguousarray(both[:, :n])


def _toposort(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Order nodes so each comes after its producers (the passes append helper nodes at the end)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
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
