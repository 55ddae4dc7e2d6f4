"""The portable graph: standard ONNX ops only, for engines without onnxruntime's contrib ops.

Traced by optimum-onnx's exporter (`text-generation-with-past`), then post-processed here:
- the tied embedding is stored once: optimum writes it twice (Gather's [vocab, n_embd] and the head
  MatMul's transposed copy); we keep the head's copy and let the embedding gather its columns;
- quantized with standard ops: int8 = onnxruntime's dynamic quantization (DynamicQuantizeLinear +
  MatMulInteger); int4 = block-wise int4 DequantizeLinear (opset 21) + MatMul for the layers, while the
  tied head / embedding stays int8, because ONNX's Gather does not take int4 tensors.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from .checkpoint import Checkpoint
from .quantize import QuantConfig, dynamic_int8, quiet

# Names of the portable graph's I/O (optimum's), written to the manifest.
PORTABLE_IO = {
    "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"},
    "outputs": {"logits": "logits"},
    "past_key": "past_key_values.{}.key", "past_value": "past_key_values.{}.value",
    "present_key": "present.{}.key", "present_value": "present.{}.value",
    "kv_layout": "BNSH [batch, n_head, past_length, head_dim], float32",
    "kv_buffer": "concatenated: present = past + new, fed back as the next past",
    "logits": "all",
}


def _write_hf_dir(ckpt: Checkpoint, d: Path) -> None:
    """optimum reads a transformers dir: write the normalized checkpoint as one."""
    from .parity import torch_model

    torch_model(ckpt).save_pretrained(d, safe_serialization=True)


def trace_with_optimum(ckpt: Checkpoint) -> onnx.ModelProto:
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "hf", Path(tmp) / "onnx"
        _write_hf_dir(ckpt, src)
        logging.disable(logging.WARNING)
        try:
            main_export(str(src), str(out), task="text-generation-with-past", do_validation=False,
                        library_name="transformers")
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(out / "model.onnx"))


def _find_head(model: onnx.ModelProto, vocab: int) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("MatMul", "MatMulInteger") and n.input[1] in inits \
                and list(inits[n.input[1]].dims)[-1] == vocab:
            return n, inits[n.input[1]]
    raise RuntimeError("optimum's graph has no lm_head MatMul with a [n_embd, vocab] weight")


def _embedding_gather(model: onnx.ModelProto, vocab: int) -> onnx.NodeProto:
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[0] in inits and list(inits[n.input[0]].dims)[0] == vocab:
            return n
    raise RuntimeError("optimum's graph has no token-embedding Gather")


def _gemm_to_matmul(model: onnx.ModelProto) -> None:
    """Linear layers come out as Gemm(A, B, C); the int4 QDQ quantizer only takes MatMul."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0) or \
                attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(n)
            continue
        if attrs.get("transB", 0):
            t = inits[n.input[1]]
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).T.copy(), t.name))
        mm = f"{n.name}/MatMul_out"
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm], name=f"{n.name}/MatMul"))
        if len(n.input) > 2 and n.input[2]:
            nodes.append(helper.make_node("Add", [mm, n.input[2]], list(n.output), name=f"{n.name}/Add"))
        else:
            nodes.append(helper.make_node("Identity", [mm], list(n.output), name=f"{n.name}/Identity"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _tie_embedding(model: onnx.ModelProto, vocab: int, n_embd: int) -> onnx.ModelProto:
    """Make the token embedding read the head's [n_embd, vocab] tensor (fp32 or int8) and drop its own."""
    head, head_w = _find_head(model, vocab)
    gather = _embedding_gather(model, vocab)
    inits = {t.name: t for t in model.graph.initializer}
    old = gather.input[0]
    n = "/model/embed_tokens"
    cols = f"{n}/columns"  # [n_embd, batch, seq]
    new = [helper.make_node("Gather", [head_w.name, gather.input[1]], [cols], name=f"{n}/Gather", axis=1)]
    if head_w.data_type == onnx.TensorProto.FLOAT:
        new.append(helper.make_node("Transpose", [cols], list(gather.output), name=f"{n}/Transpose", perm=[1, 2, 0]))
    else:  # int8 head from dynamic quantization: dequantize with its own per-tensor scale / zero point
        q = next(x for x in model.graph.node if x.op_type == "MatMulInteger" and x.input[1] == head_w.name)
        # onnxruntime names a quantized weight's scale after the weight: W_quantized -> W_scale
        w_scale, w_zero = f"{head_w.name.removesuffix('_quantized')}_scale", q.input[3]
        assert w_scale in inits, f"no {w_scale} in the quantized graph"
        tr = f"{n}/Transpose_out"
        new.append(helper.make_node("Transpose", [cols], [tr], name=f"{n}/Transpose", perm=[1, 2, 0]))
        new.append(helper.make_node("DequantizeLinear", [tr, w_scale, w_zero], list(gather.output),
                                    name=f"{n}/DequantizeLinear"))
    nodes = []
    for x in model.graph.node:
        nodes.extend(new if x is gather else [x])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(old in x.input for x in model.graph.node):
        kept = [t for t in model.graph.initializer if t.name != old]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return model


def build_portable(ckpt: Checkpoint, quant: QuantConfig | None) -> onnx.ModelProto:
    cfg = ckpt.config
    model = trace_with_optimum(ckpt)

    def tie(m: onnx.ModelProto) -> onnx.ModelProto:
        return _tie_embedding(m, cfg.vocab_size, cfg.n_embd) if ckpt.tied else m

    with quiet():
        if quant is None:
            return tie(model)
        head, _ = _find_head(model, cfg.vocab_size)
        if quant.variant == "int8":
            model = dynamic_int8(model, op_types=("MatMul", "Gemm"))
        else:
            from onnxruntime.quantization import QuantFormat
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            _gemm_to_matmul(model)
            model = dynamic_int8(model, nodes=[head.name])
            q = MatMulNBitsQuantizer(model, bits=4, block_size=quant.block_size, is_symmetric=False,
                                     quant_format=QuantFormat.QDQ, op_types_to_quantize=("MatMul",))
            q.process()
            model = q.model.model
        return tie(model)
