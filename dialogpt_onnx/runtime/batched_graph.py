"""The batching form of an export's graph, made at load on onnxruntime >= 1.32.

An export's GroupQueryAttention nodes take the 7 inputs every onnxruntime build reads (1.30/1.31 in Node and
the browser, older desktop and mobile builds). Without the 17th, `query_seqlens` (1.32+), a call may not
append several tokens to several rows at once ("batch_size must be 1 when sequence_length > 1 and past
context is given"), so a ragged prefill runs row by row: 4-6% fewer tokens/s for 16 chats on DialoGPT-small
int8 (docs/reach.md). Where onnxruntime reads it, the loader adds that input to every GQA node and to the graph
before the session is built, and the runtime feeds it.

Edited at the protobuf wire level: the runtime does not depend on the `onnx` package, and the edit is two
appends (repeated fields may be extended anywhere in a message), so weights are copied once, never parsed.
"""

from __future__ import annotations

import onnxruntime as ort

QUERY_SEQLENS = "query_seqlens"
GQA_INPUTS = 17  # query_seqlens is input 16
_GRAPH, _NODE, _NODE_INPUT, _NODE_OP, _GRAPH_INPUT = 7, 1, 1, 4, 11  # ModelProto.graph, GraphProto.node, ...
_INT32 = 6  # TensorProto.INT32


def supported(version: str = ort.__version__) -> bool:
    """Whether this onnxruntime reads GroupQueryAttention's query_seqlens."""
    major, minor = (int(p) for p in version.split(".")[:2])
    return (major, minor) >= (1, 32)


def _varint(b: bytes | memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = b[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        if v < 0x80:
            out.append(v)
            return bytes(out)
        out.append((v & 0x7F) | 0x80)
        v >>= 7


def len_field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def _fields(b: memoryview) -> list[tuple[int, int, int, int]]:
    """(field number, start of the field's key, start of its payload, end) for each field of a message."""
    out, i = [], 0
    while i < len(b):
        start = i
        key, i = _varint(b, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(b, i)
            out.append((number, start, start, i))
            continue
        if wire == 2:
            n, i = _varint(b, i)
            out.append((number, start, i, i + n))
            i += n
            continue
        size = {1: 8, 5: 4}.get(wire)
        if size is None:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, start, i, i + size))
        i += size
    return out


def _gqa_node(node: memoryview) -> bytes | None:
    """The node with query_seqlens as its 17th input, if it is a GroupQueryAttention node; else None."""
    fields = _fields(node)
    ops = [bytes(node[p:e]) for n, _, p, e in fields if n == _NODE_OP]
    if ops != [b"GroupQueryAttention"]:
        return None
    n_inputs = sum(1 for n, *_ in fields if n == _NODE_INPUT)
    if n_inputs >= GQA_INPUTS:
        return None  # already there
    extra = b"".join(len_field(_NODE_INPUT, b"") for _ in range(GQA_INPUTS - 1 - n_inputs))
    return bytes(node) + extra + len_field(_NODE_INPUT, QUERY_SEQLENS.encode())


def _query_seqlens_input() -> bytes:
    """ValueInfoProto: query_seqlens, int32 [batch]."""
    dim = len_field(1, len_field(2, b"batch_size"))  # TensorShapeProto.dim { dim_param: "batch_size" }
    tensor = encode_varint(1 << 3) + encode_varint(_INT32) + len_field(2, dim)  # elem_type, shape
    return len_field(1, QUERY_SEQLENS.encode()) + len_field(2, len_field(1, tensor))  # name, type.tensor_type


def with_query_seqlens(model: bytes) -> bytes | None:
    """The serialized ModelProto with query_seqlens fed to every GroupQueryAttention node, or None when the
    graph has no GQA node without it (nothing to do)."""
    view = memoryview(model)
    graphs = [f for f in _fields(view) if f[0] == _GRAPH]
    if len(graphs) != 1:
        raise ValueError("not an ONNX model: it has no single graph")
    _, g_key, g_start, g_end = graphs[0]
    graph = view[g_start:g_end]
    parts: list[bytes | memoryview] = []
    changed = at = 0
    for number, key, start, end in _fields(graph):
        if number != _NODE:
            continue
        node = _gqa_node(graph[start:end])
        if node is None:
            continue
        parts += [graph[at:key], len_field(_NODE, node)]
        at, changed = end, changed + 1
    if not changed:
        return None
    parts += [graph[at:], len_field(_GRAPH_INPUT, _query_seqlens_input())]
    size = sum(len(p) for p in parts)
    head = encode_varint(_GRAPH << 3 | 2) + encode_varint(size)
    return b"".join([view[:g_key], head, *parts, view[g_end:]])  # one copy of the weights
