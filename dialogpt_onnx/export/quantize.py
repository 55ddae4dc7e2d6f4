"""Quantization passes over the fp32 graph: an explicit config in, a quantized graph out.

- int8: onnxruntime.quantization's dynamic quantization of every layer MatMul (DynamicQuantizeMatMul).
- int4: onnxruntime's MatMulNBits quantizer (block-wise 4-bit weights, accuracy_level 4 = int8 compute).
- both: the tied embedding / lm_head is quantized once (MatMulNBits, `tied_head_bits`) and the
  embedding lookup reads the same tensor through GatherBlockQuantized. Written by hand because
  onnxruntime's quantizers treat the Gather and the head as two tensors and would store them twice.

The passes edit a GraphEditor in place, one weight at a time, with onnxruntime's own block quantizer for
MatMulNBits (the kernel its MatMulNBitsQuantizer calls): that quantizer takes a whole ModelProto and
copies it, which held every weight two and three times over at DialoGPT-large.
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
from onnx import helper

from .onnx_ops import MS_DOMAIN, GraphEditor, is_big, save_model

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
    # nbits layers kept at 8 bits (same block), by a part of their node name: "attn/qkv", "attn/o_proj",
    # "mlp/fc", "mlp/proj" (mixed precision, as llama.cpp's Q4_K_M keeps some tensors at 6 bits)
    eight_bit_layers: tuple[str, ...] = ()
    # how those are quantized: "rowwise" (the int8 variant's layers, 7-bit weights) or "nbits" (MatMulNBits
    # 8-bit, same block). Row-wise QKV on the bundled model: mean KL 1.27e-4 vs 1.37e-4, first token of a
    # 64-token prompt 1.01x the int8 graph's vs 1.14x on DialoGPT-small, AVX2 (docs/quantization.md)
    eight_bit_method: str = "nbits"
    # a second int8 row per token for what the first missed (~15-bit activations, one pass over the
    # weights): in the rowwise layers named like these parts, and in the tied head (accuracy_level 4)
    residual_layers: tuple[str, ...] = ()
    head_residual: bool = False
    # the block scales on disk (4-bit layers, tied head): "float16" (a Cast to float32 that onnxruntime folds at
    # load, as llama.cpp's Q4_0 stores them: 0.5625 instead of 0.625 bytes a weight at block 32) or "float32".
    # float16 needs graph optimizations (level basic or above): unfolded, MatMulNBits packs its weight
    # before the scales exist and multiplies by zeros (onnxruntime 1.32; runtime.manifest refuses "off")
    scale_dtype: str = "float32"


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


def quantize(ed: GraphEditor, qc: QuantConfig) -> GraphEditor:
    """Quantize the fp32 graph in `ed` (edited in place, and returned)."""
    with quiet():
        return _quantize(ed, qc)


def _quantize(model: GraphEditor, qc: QuantConfig) -> GraphEditor:
    if qc.residual_layers and qc.layer_method != "rowwise":
        raise ValueError("residual_layers is for rowwise int8 layers")
    if qc.head_residual and qc.accuracy_level != 4:
        raise ValueError("head_residual is for accuracy_level 4 (int8 activations in the head)")
    model = quantize_tied_head(model, qc.head_bits, qc.head_block_size, qc.accuracy_level, qc.head_residual,
                               qc.scale_dtype)
    bits = {"int8": 8, "int4": 4}.get(qc.variant)
    if bits is None:
        raise ValueError(f"unknown quantized variant {qc.variant!r}")
    if qc.layer_method == "dynamic" and bits == 8:
        return GraphEditor.edit(dynamic_int8(model.model(), qc.per_channel, reduce_range=qc.reduce_range))
    if qc.layer_method == "rowwise" and bits == 8:
        return rowwise_int8(model, qc.reduce_range, qc.residual_layers)
    if qc.eight_bit_method not in ("rowwise", "nbits"):
        raise ValueError(f"unknown eight_bit_method {qc.eight_bit_method!r}")
    if qc.eight_bit_layers and bits < 8 and qc.eight_bit_method == "rowwise":
        # the rest at `bits` first: the MatMuls left then are exactly the 8-bit ones
        eight = set(matmuls_named(model, qc.eight_bit_layers))
        rest = [n.name for n in model.find("MatMul") if n.name not in eight]
        model = nbits_layers(model, bits, qc.block_size, qc.accuracy_level, nodes=rest, algorithm=qc.algorithm,
                             scale_dtype=qc.scale_dtype)
        return rowwise_int8(model, reduce_range=True)  # 7-bit weights, as the int8 variant's (AVX2 saturation)
    if qc.eight_bit_layers and bits < 8:  # these at 8 bits, then the rest at `bits`
        model = nbits_layers(model, 8, qc.block_size, qc.accuracy_level,
                             nodes=matmuls_named(model, qc.eight_bit_layers))
    return nbits_layers(model, bits, qc.block_size, qc.accuracy_level, algorithm=qc.algorithm,
                        scale_dtype=qc.scale_dtype)


def matmuls_named(ed: GraphEditor, parts: tuple[str, ...]) -> list[str]:
    """The layers' MatMul nodes whose name holds one of `parts` ("attn/qkv", "mlp/fc", ...)."""
    names = [n.name for n in ed.find("MatMul") if any(p in n.name for p in parts)]
    if not names:
        raise ValueError(f"no layer MatMul is named like {', '.join(parts)}")
    return names


def nbits_layers(ed: GraphEditor, bits: int, block_size: int, accuracy_level: int,
                 nodes: list[str] | None = None, algorithm: str = "rtn", scale_dtype: str = "float32") -> GraphEditor:
    """MatMul(x, W) -> MatMulNBits for every MatMul with a 2-D weight, or only `nodes`."""
    if algorithm == "hqq":
        return _hqq(ed, bits, block_size, accuracy_level, nodes)
    if algorithm != "rtn":
        raise ValueError(f"unknown MatMulNBits algorithm {algorithm!r}")
    for node in ed.find("MatMul"):
        w = node.input[1]
        if (nodes is not None and node.name not in nodes) or w not in ed.initializers or len(ed.shape(w)) != 2:
            continue
        packed, scales, zeros = block_quantize(ed.array(w), bits, block_size)
        k, n = ed.shape(w)
        ed.remove(node)
        inputs = [node.input[0], ed.weight(f"{w}_Q{bits}", packed), _scales(ed, f"{w}_scales", scales, scale_dtype),
                  ed.weight(f"{w}_zero_points", zeros)]
        ed.op("MatMulNBits", inputs, f"{node.name}_Q{bits}", outputs=list(node.output), domain=MS_DOMAIN,
              **nbits_attributes(k, n, bits, block_size, accuracy_level))
    return ed


def _scales(ed: GraphEditor, name: str, scales: np.ndarray, dtype: str) -> str:
    """The scales input of a MatMulNBits: the fp32 array, or (`dtype` float16, where every scale survives
    the rounding: none overflows, none nonzero becomes zero) an fp16 copy and the Cast that restores it."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unknown scale_dtype {dtype!r}")
    with np.errstate(over="ignore"):  # an overflow is found below and keeps fp32
        half = scales.astype(np.float16)
    if dtype == "float32" or not np.isfinite(half).all() or ((half == 0) & (scales != 0)).any():
        return ed.weight(name, scales)
    return ed.op1("Cast", [ed.weight(f"{name}_fp16", half)], f"{name}/Cast", to=onnx.TensorProto.FLOAT)


def nbits_attributes(k: int, n: int, bits: int, block_size: int, accuracy_level: int) -> dict[str, int]:
    """MatMulNBits' attributes as onnxruntime's quantizer writes them (accuracy_level 0 left out: the default)."""
    return {"K": k, "N": n, "bits": bits, "block_size": block_size,
            **({"accuracy_level": accuracy_level} if accuracy_level else {})}


def block_quantize(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[K, N] fp32 -> MatMulNBits' packed weight [N, K/block, block*bits/8], scales [N, K/block] and packed
    zero points, asymmetric round-to-nearest, by onnxruntime's own kernel."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=bits)
    return DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(weight, np.float32))


def _hqq(ed: GraphEditor, bits: int, block_size: int, accuracy_level: int, nodes: list[str] | None) -> GraphEditor:
    """onnxruntime's HQQ quantizer fits scales and zero points (needs torch); it takes a whole model."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    # onnxruntime's nodes_to_include adds nodes to the op types quantized (it quantizes every MatMul
    # anyway), so the others are excluded instead
    exclude = [] if nodes is None else [n.name for n in ed.find("MatMul") if n.name not in nodes]
    q = MatMulNBitsQuantizer(ed.model(), nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",),
                             algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits,
                                                                  op_types_to_quantize=("MatMul",)))
    q.process()
    out = GraphEditor.edit(q.model.model)
    for node in out.find("MatMulNBits"):  # HQQ leaves accuracy_level unset (fp32 compute)
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", accuracy_level)])
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


def rowwise_int8(ed: GraphEditor, reduce_range: bool = True,
                 residual_layers: tuple[str, ...] = ()) -> GraphEditor:
    """int8 layers whose activations are quantized one token row at a time, so a row's result does not
    depend on the other rows of its batch or on how its history was chunked into the KV cache.

    x ─Abs─ReduceMax(last axis)─×1/127─► s [batch, seq, 1]
    x ─QuantizeLinear(s, one block per row, zero point 128)─► uint8 ─MatMulIntegerToFloat(W, per-column
      scale)─×s─► y

    Written by hand: onnxruntime's DynamicQuantizeMatMul / MatMulIntegerToFloat take one activation scale
    per tensor and MatMulInteger rejects per-row zero points. Activations are uint8 with zero point 128
    because int8 ones hit a slow s8×s8 path on AVX2. An all-zero row gets scale 0: its (meaningless)
    integers are multiplied by that 0.

    `residual_layers` (parts of node names, "" for all): there each row is quantized twice — the row, then
    what its int8 form missed (at 1/254 of the row's scale) — and both go through one MatMulIntegerToFloat as two rows
    (one pass over the weights), their products summed in one fixed order: activations good to ~15 bits,
    still exact integer dot products.
    """
    ed.require_opset(21)  # QuantizeLinear's blocked form (block_size)
    inv127 = ed.weight("rowwise/inv127", np.asarray(1 / 127, np.float32))
    one = ed.weight("rowwise/one", np.asarray(1.0, np.float32))
    zero_point = ed.weight("rowwise/zero_point", np.asarray(128, np.uint8))
    last_axis = ed.const_i64("rowwise/last_axis", [-1])
    # the blocked form wants a zero point per row: one [batch, seq, 1] tensor of 128 serves every layer
    rows = ed.op1("Shape", [ed.inputs[0].name], "rowwise/Shape")  # input_ids [batch, seq]
    zero_points = ed.op1("Unsqueeze", [ed.op1("Expand", [zero_point, rows], "rowwise/Expand"), last_axis],
                         "rowwise/Unsqueeze")
    levels = 63 if reduce_range else 127
    residual = set(matmuls_named(ed, residual_layers)) if residual_layers else set()
    if residual:
        inv254 = ed.weight("rowwise/inv254", np.asarray(1 / 254, np.float32))
        pair_weights = ed.weight("rowwise/pair_weights", np.asarray([[1.0], [1 / 254]], np.float32))
        pair_axis = ed.const_i64("rowwise/pair_axis", [-2])
        pair_shape = ed.const_i64("rowwise/pair_shape", [0, 0, 2, -1])
    for node in ed.find("MatMul"):
        w = node.input[1]
        if w not in ed.initializers or len(ed.shape(w)) != 2:
            continue
        weight = ed.array(w)
        col_scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / levels
        qweight = np.clip(np.round(weight / col_scale), -levels, levels)
        scale = ed.weight(f"{w}/scale", col_scale.astype(np.float32))
        if reduce_range:
            qw, w_zero = ed.weight(f"{w}/int8", qweight.astype(np.int8)), []
        else:
            qw, w_zero = ed.weight(f"{w}/int8", (qweight + 128).astype(np.uint8)), [zero_point]
        n, x = node.name.removesuffix("/MatMul"), node.input[0]
        ed.remove(node)
        k = int(weight.shape[0])

        absmax = ed.op1("ReduceMax", [ed.op1("Abs", [x], f"{n}/rowwise/Abs"), last_axis],
                        f"{n}/rowwise/ReduceMax", keepdims=1)
        row_scale = ed.op1("Mul", [absmax, inv127], f"{n}/rowwise/RowScale")
        xq = ed.op1("QuantizeLinear", [x, row_scale, zero_points], f"{n}/rowwise/QuantizeLinear", axis=-1,
                    block_size=k)
        if node.name in residual:
            # what the int8 row missed lies within ±row_scale/2: 254 levels of row_scale/254 cover it
            seen = ed.op1("DequantizeLinear", [xq, row_scale, zero_points], f"{n}/rowwise/DequantizeLinear",
                          axis=-1, block_size=k)
            eq = ed.op1("QuantizeLinear", [ed.op1("Sub", [x, seen], f"{n}/rowwise/Residual"),
                                           ed.op1("Mul", [row_scale, inv254], f"{n}/rowwise/ResidualScale"),
                                           zero_points], f"{n}/rowwise/QuantizeResidual", axis=-1, block_size=k)
            xq = ed.op1("Reshape", [ed.op1("Concat", [xq, eq], f"{n}/rowwise/Concat", axis=-1),
                                    pair_shape], f"{n}/rowwise/Pair")
        y = ed.op1("MatMulIntegerToFloat", [xq, qw, one, scale, zero_point, *w_zero],
                   f"{n}/rowwise/MatMulIntegerToFloat", domain=MS_DOMAIN)
        if node.name in residual:  # [batch, seq, 2, N]: row + residual / 254, in that order
            y = ed.op1("ReduceSum", [ed.op1("Mul", [y, pair_weights], f"{n}/rowwise/PairWeights"), pair_axis],
                       f"{n}/rowwise/ReduceSum", keepdims=0)
        ed.op("Mul", [y, row_scale], f"{n}/rowwise/Mul", outputs=list(node.output))
    return ed


def quantize_tied_head(ed: GraphEditor, bits: int, block_size: int,
                       accuracy_level: int, residual: bool = False, scale_dtype: str = "float32") -> GraphEditor:
    """Gemm(h, W, transB=1) → MatMulNBits(h, Wq) and Gather(W, ids) → GatherBlockQuantized(Wq, ids).

    `residual` (with accuracy_level 4, which quantizes h to int8 per block inside MatMulNBits): h and what
    that int8 form misses go through MatMulNBits as two rows, their logits summed. `scale_dtype`: as
    QuantConfig's (float16: one fp16 copy of the scales, cast and reshaped for each op at load)."""
    gemm, gather = ed.node(HEAD_GEMM), ed.node(EMBED_GATHER)
    head_name = gemm.input[1]
    head = ed.array(head_name)  # [vocab, n_embd]
    vocab, n_embd = head.shape

    packed, scales, zeros = block_quantize(head.T, bits, block_size)  # head.T: [n_embd, vocab], as MatMul's B
    k_blocks = packed.shape[1]
    # One quantized weight serves both ops. With fp32 scales, their scales and zero points (1/32 of it or
    # less) are stored once per op, in the shape each op takes: reshaping one copy in the graph is wrong unless
    # onnxruntime folds that Reshape (without graph optimizations MatMulNBits pre-packs its weight before the
    # scales exist and multiplies by zeros). fp16 scales need that folding anyway: one copy serves both.
    qweight = ed.weight("lm_head.qweight", packed)
    matmul_scales = _scales(ed, "lm_head.matmul_scales", scales, scale_dtype)
    if matmul_scales in ed.initializers:
        gather_scales = ed.weight("lm_head.scales", scales.reshape(vocab, k_blocks, 1))
    else:
        gather_scales = ed.op1("Reshape", [matmul_scales, ed.const_i64("/lm_head/scales_shape", [vocab, k_blocks, 1])],
                               "/lm_head/scales/Reshape")
    head_inputs = [gemm.input[0], qweight, matmul_scales,
                   ed.weight("lm_head.matmul_zero_points", zeros)]  # 4-bit: two a byte, as it packs them
    unpacked = zeros if bits == 8 else _unpack4(zeros, k_blocks)
    gather_inputs = [qweight, gather.input[1], gather_scales,
                     ed.weight("lm_head.zero_points", unpacked.reshape(vocab, k_blocks, 1))]
    attrs = nbits_attributes(n_embd, vocab, bits, block_size, accuracy_level)
    ed.remove(gemm)
    if residual:
        head_inputs[0] = _with_block_residual(ed, gemm.input[0], n_embd, block_size)
        pair = ed.op1("MatMulNBits", head_inputs, "/lm_head/MatMulNBits", domain=MS_DOMAIN, **attrs)
        ed.op("ReduceSum", [pair, ed.const_i64("/lm_head/pair_axis", [1])], "/lm_head/ReduceSum",
              outputs=list(gemm.output), keepdims=0)
    else:
        ed.op("MatMulNBits", head_inputs, "/lm_head/MatMulNBits", outputs=list(gemm.output), domain=MS_DOMAIN,
              **attrs)
    if gather.input[0] == head_name:  # tied: the embedding reads the head's quantized tensor
        ed.remove(gather)
        blocks = ed.op1("GatherBlockQuantized", gather_inputs, "/model/embed_tokens/GatherBlockQuantized",
                        domain=MS_DOMAIN, bits=bits, block_size=block_size, gather_axis=0, quantize_axis=2)
        ed.op("Reshape", [blocks, ed.const_i64("/model/embed_tokens/shape", [0, 0, n_embd])],
              "/model/embed_tokens/Reshape", outputs=list(gather.output))
    return ed  # the fp32 head, now unread, is not written


def _with_block_residual(ed: GraphEditor, h: str, n_embd: int, block_size: int) -> str:
    """[rows, K] → [rows, 2, K]: each row and its error after symmetric int8 quantization per block of
    `block_size` (scale absmax/127, round half to even: what MatMulNBits' int8 compute does to it)."""
    n = "/lm_head/residual"
    if n_embd % block_size:
        raise ValueError(f"head_residual needs the head's block size ({block_size}) to divide n_embd ({n_embd})")
    ed.require_opset(18)  # ReduceMax with axes as an input
    blocks = ed.op1("Reshape", [h, ed.const_i64(f"{n}/blocks", [0, n_embd // block_size, block_size])],
                    f"{n}/Reshape")
    absmax = ed.op1("ReduceMax", [ed.op1("Abs", [blocks], f"{n}/Abs"), ed.const_i64(f"{n}/last_axis", [-1])],
                    f"{n}/ReduceMax", keepdims=1)
    tiny = ed.weight(f"{n}/tiny", np.asarray(1e-30, np.float32))  # an all-zero block: q = 0, not 0/0
    levels = ed.weight(f"{n}/levels", np.asarray(127, np.float32))
    inv = ed.op1("Div", [levels, ed.op1("Max", [absmax, tiny], f"{n}/Max")], f"{n}/InvScale")
    q = ed.op1("Round", [ed.op1("Mul", [blocks, inv], f"{n}/Scaled")], f"{n}/Round")
    seen = ed.op1("Mul", [q, ed.op1("Div", [absmax, levels], f"{n}/Scale")], f"{n}/Dequantized")
    err = ed.op1("Reshape", [ed.op1("Sub", [blocks, seen], f"{n}/Sub"), ed.const_i64(f"{n}/rows", [0, n_embd])],
                 f"{n}/ReshapeBack")
    pair_axis = ed.const_i64(f"{n}/pair_axis", [1])
    return ed.op1("Concat", [ed.op1("Unsqueeze", [h, pair_axis], f"{n}/UnsqueezeRow"),
                             ed.op1("Unsqueeze", [err, pair_axis], f"{n}/UnsqueezeResidual")], f"{n}/Concat", axis=1)


def _unpack4(packed: np.ndarray, n: int) -> np.ndarray:
    """[rows, ceil(n/2)] bytes of two 4-bit values (low nibble first) -> [rows, n] uint8."""
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return np.ascontiguousarray(both[:, :n])
