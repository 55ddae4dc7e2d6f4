"""The batching form of an export: GroupQueryAttention's query_seqlens added at load, at the protobuf wire
level, to exactly the GQA nodes, with the weights untouched."""

from __future__ import annotations

import onnx
import pytest

from dialogpt_onnx.runtime import batched_graph
from dialogpt_onnx.runtime.manifest import MODEL_FILE


def test_query_seqlens_is_added_to_every_gqa_node_and_nothing_else(exported):
    path = exported("int8") / MODEL_FILE
    before = onnx.load(str(path))
    edited = batched_graph.with_query_seqlens(path.read_bytes())
    assert edited is not None
    after = onnx.load_from_string(edited)
    gqa = [n for n in after.graph.node if n.op_type == "GroupQueryAttention"]
    assert gqa and all(len(n.input) == 17 and n.input[16] == "query_seqlens" for n in gqa)
    assert all(list(n.input[7:16]) == [""] * 9 for n in gqa)
    others = [(n.name, list(n.input)) for n in after.graph.node if n.op_type != "GroupQueryAttention"]
    assert others == [(n.name, list(n.input)) for n in before.graph.node if n.op_type != "GroupQueryAttention"]
    (added,) = [i for i in after.graph.input if i.name == "query_seqlens"]
    assert added.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert [d.dim_param for d in added.type.tensor_type.shape.dim] == ["batch_size"]
    assert [i.name for i in after.graph.input][:-1] == [i.name for i in before.graph.input]
    assert [t.raw_data for t in after.graph.initializer] == [t.raw_data for t in before.graph.initializer]
    onnx.checker.check_model(after)
    assert batched_graph.with_query_seqlens(edited) is None  # already there: nothing to do


def test_a_file_that_is_not_a_model_is_refused():
    for junk in (b"", b"\x0a\x05abc", b"\xff" * 64):
        with pytest.raises((ValueError, IndexError)):
            batched_graph.with_query_seqlens(junk)


@pytest.mark.parametrize(("version", "reads"), [("1.32.0", True), ("1.33.1", True), ("2.0.0", True),
                                                 ("1.31.1", False), ("1.22.0", False)])
def test_which_onnxruntime_reads_query_seqlens(version, reads):
    assert batched_graph.supported(version) is reads
