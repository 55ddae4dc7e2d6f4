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
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from .checkpoint import Checkpoint
from .onnx_ops import GraphEditor
from .quantize import QuantConfig, dynamic_int8, quiet

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel


def trace_with_optimum(ref: GPT2LMHeadModel) -> onnx.ModelProto:
    """optimum reads a transformers dir: the checkpoint's torch model is written as one, then traced."""
    from optimum.exporters.onnx import main_export

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "hf", Path(tmp) / "onnx"
        ref.save_pretrained(src, safe_serialization=True)
        logging.disable(logging.WARNING)
        try:
            main_export(str(src), str(out), task="text-generation-with-past", do_validation=False,
                        library_name="transformers")
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(out / "model.onnx"))


def _find_head(ed: GraphEditor, vocab: int) -> onnx.NodeProto:
    for n in ed.nodes:
        if n.op_type in ("MatMul", "MatMulInteger") and n.input[1] in ed.initializers \
                and ed.shape(n.input[1])[-1] == vocab:
            return n
    raise RuntimeError("optimum's graph has no lm_head MatMul with a [n_embd, vocab] weight")


def _embedding_gather(ed: GraphEditor, vocab: int) -> onnx.NodeProto:
    for n in ed.find("Gather"):
        if n.input[0] in ed.initializers and ed.shape(n.input[0])[0] == vocab:
            return n
    raise RuntimeError("optimum's graph has no token-embedding Gather")


def _gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Linear layers come out as Gemm(A, B, C); the int4 QDQ quantizer only takes MatMul."""
    ed = GraphEditor.edit(model)
    for n in ed.find("Gemm"):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.input[1] not in ed.initializers or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            continue
        if attrs.get("transB", 0):
            ed.weight(n.input[1], ed.array(n.input[1]).T.copy())
        ed.remove(n)
        mm = ed.op1("MatMul", [n.input[0], n.input[1]], f"{n.name}/MatMul")
        if len(n.input) > 2 and n.input[2]:
            ed.op("Add", [mm, n.input[2]], f"{n.name}/Add", outputs=list(n.output))
        else:
            ed.op("Identity", [mm], f"{n.name}/Identity", outputs=list(n.output))
    return ed.model()


def _tie_embedding(model: onnx.ModelProto, vocab: int) -> onnx.ModelProto:
    """Make the token embedding read the head's [n_embd, vocab] tensor (fp32 or int8); its own copy,
    unread from then on, is dropped."""
    ed = GraphEditor.edit(model)
    head_w = _find_head(ed, vocab).input[1]
    gather = _embedding_gather(ed, vocab)
    n = "/model/embed_tokens"
    ed.remove(gather)
    cols = ed.op1("Gather", [head_w, gather.input[1]], f"{n}/Gather", axis=1)  # [n_embd, batch, seq]
    if ed.array(head_w).dtype == np.float32:
        ed.op("Transpose", [cols], f"{n}/Transpose", outputs=list(gather.output), perm=[1, 2, 0])
    else:  # int8 head from dynamic quantization: dequantize with its own per-tensor scale / zero point
        q = next(x for x in ed.find("MatMulInteger") if x.input[1] == head_w)
        # onnxruntime names a quantized weight's scale after the weight: W_quantized -> W_scale
        w_scale, w_zero = f"{head_w.removesuffix('_quantized')}_scale", q.input[3]
        assert w_scale in ed.initializers, f"no {w_scale} in the quantized graph"
        tr = ed.op1("Transpose", [cols], f"{n}/Transpose", perm=[1, 2, 0])
        ed.op("DequantizeLinear", [tr, w_scale, w_zero], f"{n}/DequantizeLinear", outputs=list(gather.output))
    return ed.model()


def build_portable(ckpt: Checkpoint, ref: GPT2LMHeadModel, quant: QuantConfig | None) -> onnx.ModelProto:
    """`ref`: the checkpoint as transformers' model (checkpoint.torch_model), built once by the pipeline."""
    cfg = ckpt.config
    model = trace_with_optimum(ref)

    def tie(m: onnx.ModelProto) -> onnx.ModelProto:
        return _tie_embedding(m, cfg.vocab_size) if ckpt.tied else m

    with quiet():
        if quant is None:
            return tie(model)
        head = _find_head(GraphEditor.edit(model), cfg.vocab_size)
        if quant.variant == "int8":
            model = dynamic_int8(model, op_types=("MatMul", "Gemm"))
        else:
            from onnxruntime.quantization import QuantFormat
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            model = _gemm_to_matmul(model)
            model = dynamic_int8(model, nodes=[head.name])
            q = MatMulNBitsQuantizer(model, bits=4, block_size=quant.block_size, is_symmetric=False,
                                     quant_format=QuantFormat.QDQ, op_types_to_quantize=("MatMul",))
            q.process()
            model = q.model.model
        return tie(model)
