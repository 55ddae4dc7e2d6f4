"""Build the fp32 decoder graph directly from GPT-2 weights with onnxruntime contrib ops.

One graph serves prefill and decode. Attention is GroupQueryAttention with the KV cache as a
preallocated buffer that the runtime binds as both past and present (no per-step copies; the
measured choice over MultiHeadAttention, which concatenates past and new KV into a fresh tensor each
step). Residual adds and LayerNorms fuse into SkipLayerNormalization, the tanh GELU into FastGelu.
Quantization is a separate pass (quantize.py): this builder never branches on precision.
"""

from __future__ import annotations

import numpy as np

from dialogpt_onnx.runtime.graph_io import CONTRIB_IO

from .checkpoint import Checkpoint
from .config import ERF_GELUS, ModelConfig
from .onnx_ops import FLOAT, INT32, INT64, MS_DOMAIN, GraphEditor

IO = CONTRIB_IO  # the names this builder gives the graph's inputs and outputs (written to the manifest)


def build_graph(ckpt: Checkpoint, all_logits: bool = False) -> GraphEditor:
    """The graph, its weights the checkpoint's own arrays (nothing copied until it is written):

    input_ids ─Gather(wte)─┐
    position_ids ─Gather(wpe)─SkipLN(ln_1) ─► [layer × n_layer] ─► SkipLN(ln_f) ─► last row ─► Gemm(wteᵀ) ─► logits
    """
    cfg, w = ckpt.config, ckpt.weights
    g = GraphEditor()
    b, s = "batch_size", "sequence_length"  # the dim names genai and transformers.js read
    ids = g.input(IO.inputs["input_ids"], INT64, [b, s])
    mask = g.input(IO.inputs["attention_mask"], INT64, [b, "total_sequence_length"])
    pos = g.input(IO.inputs["position_ids"], INT64, [b, s])
    seqlens_k, total = _gqa_lengths(g, mask)
    g.output(IO.logits, FLOAT, [b, s if all_logits else 1, cfg.vocab_size])

    wte = g.weight("wte.weight", w["wte.weight"])
    tok = g.op1("Gather", [wte, ids], "/model/embed_tokens/Gather")
    pe = g.op1("Gather", [g.weight("wpe.weight", w["wpe.weight"]), pos], "/model/embed_positions/Gather")
    # SkipLayerNorm(tok, pos) gives ln_1(x) of layer 0 and the residual stream x = tok + pos.
    hidden, residual = _skip_layer_norm(g, cfg, w, tok, pe, "h.0.ln_1", None, "/model/layers.0/ln_1")

    for i in range(cfg.n_layer):
        mlp_out, out_bias, residual = _layer(g, cfg, w, i, hidden, residual, seqlens_k, total)
        nxt = f"h.{i + 1}.ln_1" if i + 1 < cfg.n_layer else "ln_f"
        name = f"/model/layers.{i + 1}/ln_1" if i + 1 < cfg.n_layer else "/model/ln_f"
        hidden, residual = _skip_layer_norm(g, cfg, w, mlp_out, residual, nxt, out_bias, name)

    if not all_logits:
        hidden = _last_real_position(g, hidden, pos, cfg.n_embd)
    _lm_head(g, cfg, ckpt, hidden, ids, wte)
    return g


def _gqa_lengths(g: GraphEditor, mask: str) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k (per row: KV slots filled after this step - 1) and total_sequence_length
    from the attention mask, as onnxruntime-genai's model builder computes them: a runtime feeds the mask that
    every decoder takes (genai and transformers.js build it themselves), and its width may be the whole buffer."""
    n = "/model/attn_mask_reformat"
    filled = g.op1("ReduceSum", [mask, g.const_i64(f"{n}/axes", [1])], f"{n}/ReduceSum", keepdims=0)
    seqlens_k = g.op1("Sub", [filled, g.weight(f"{n}/one", np.array(1, dtype=np.int64))], f"{n}/Sub")
    seqlens_k = g.op1("Cast", [seqlens_k], f"{n}/seqlens_k", to=INT32)
    width = g.op1("Shape", [mask], f"{n}/Shape", start=1, end=2)
    width = g.op1("Squeeze", [width], f"{n}/Squeeze")
    return seqlens_k, g.op1("Cast", [width], f"{n}/total_sequence_length", to=INT32)


def _skip_layer_norm(g: GraphEditor, cfg: ModelConfig, w: dict, x: str, skip: str, ln: str,
                     bias: str | None, name: str) -> tuple[str, str]:
    """(normed, x + skip + bias): SkipLayerNormalization's outputs 0 and 3."""
    gamma = g.weight(f"{ln}.weight", w[f"{ln}.weight"])
    beta = g.weight(f"{ln}.bias", w[f"{ln}.bias"])
    inputs = [x, skip, gamma, beta] + ([bias] if bias else [])
    outs = g.op("SkipLayerNormalization", inputs, f"{name}/SkipLayerNorm", n_out=4, domain=MS_DOMAIN,
                epsilon=cfg.layer_norm_epsilon)
    return outs[0], outs[3]


def _layer(g: GraphEditor, cfg: ModelConfig, w: dict, i: int, x: str, residual: str, seqlens_k: str,
           total: str) -> tuple[str, str, str]:
    """
    x ─MatMul(c_attn)+b─► GQA(KV buffer) ─MatMul(c_proj)─► SkipLN(ln_2, +residual, +c_proj.b)
      ─MatMul(c_fc)─► FastGelu(+c_fc.b) ─MatMul(mlp.c_proj)─► (output, its bias for the next SkipLN)
    """
    p, n = f"h.{i}.", f"/model/layers.{i}"

    def param(name: str) -> str:
        return g.weight(p + name, w[p + name])

    qkv = g.op1("MatMul", [x, param("attn.c_attn.weight")], f"{n}/attn/qkv/MatMul")
    qkv = g.op1("Add", [qkv, param("attn.c_attn.bias")], f"{n}/attn/qkv/Add")
    past = [IO.kv_name("past", k, i) for k in ("key", "value")]
    present = [IO.kv_name("present", k, i) for k in ("key", "value")]
    # GQA's first 7 inputs only, which every build reads (JS and mobile too; the float32 kernel from 1.20); its
    # 17th, query_seqlens (1.32+), the Python loader adds where onnxruntime reads it (runtime.batched_graph).
    # Without it a ragged batch's padding is cached past each row's length, where that row's next tokens
    # overwrite it, and no real token attends to a later slot.
    gqa_inputs = [qkv, "", "", *past, seqlens_k, total]
    for name in past:
        g.input(name, FLOAT, ["batch_size", cfg.n_head, "past_sequence_length", cfg.head_dim])
    for name in present:  # = past when they share one buffer (this runtime, genai); past + new otherwise
        g.output(name, FLOAT, ["batch_size", cfg.n_head, "total_sequence_length", cfg.head_dim])
    ctx = g.op("GroupQueryAttention", gqa_inputs, f"{n}/attn/GroupQueryAttention", domain=MS_DOMAIN,
               outputs=[f"{n}/attn/GroupQueryAttention/output_0", *present],
               num_heads=cfg.n_head, kv_num_heads=cfg.n_head, scale=cfg.attention_scale(i))[0]
    o = g.op1("MatMul", [ctx, param("attn.c_proj.weight")], f"{n}/attn/o_proj/MatMul")
    h, residual = _skip_layer_norm(g, cfg, w, o, residual, p + "ln_2", param("attn.c_proj.bias"), f"{n}/ln_2")
    fc = g.op1("MatMul", [h, param("mlp.c_fc.weight")], f"{n}/mlp/fc/MatMul")
    act = "BiasGelu" if cfg.activation in ERF_GELUS else "FastGelu"
    gelu = g.op1(act, [fc, param("mlp.c_fc.bias")], f"{n}/mlp/{act}", domain=MS_DOMAIN)
    proj = g.op1("MatMul", [gelu, param("mlp.c_proj.weight")], f"{n}/mlp/proj/MatMul")
    # The projection's bias and the residual add fold into the next layer's SkipLayerNorm.
    return proj, param("mlp.c_proj.bias"), residual


def _last_real_position(g: GraphEditor, hidden: str, pos: str, n_embd: int) -> str:
    """hidden[b, n_b - 1, :] for each row, n_b its real tokens: the last real token of a right-padded batch.
    Padding is marked by position id -1 (a runtime's own choice: one feeding no padding needs no extra input)."""
    n = "/model/last_position"
    real = g.op1("GreaterOrEqual", [pos, g.weight(f"{n}/zero", np.array(0, dtype=np.int64))], f"{n}/IsReal")
    real = g.op1("Cast", [real], f"{n}/CastReal", to=INT64)
    count = g.op1("ReduceSum", [real, g.const_i64(f"{n}/seq_axis", [1])], f"{n}/ReduceSum", keepdims=0)
    idx = g.op1("Sub", [count, g.weight(f"{n}/one", np.array(1, dtype=np.int64))], f"{n}/Sub")
    idx = g.op1("Unsqueeze", [idx, g.const_i64(f"{n}/axes", [1, 2])], f"{n}/Unsqueeze")
    idx = g.op1("Expand", [idx, g.const_i64(f"{n}/shape", [1, 1, n_embd])], f"{n}/Expand")
    return g.op1("GatherElements", [hidden, idx], f"{n}/GatherElements", axis=1)


def _lm_head(g: GraphEditor, cfg: ModelConfig, ckpt: Checkpoint, hidden: str, ids: str, wte: str) -> None:
    """logits = hidden @ Wᵀ with W the tied embedding (stored once: Gemm reads it transposed)."""
    n = "/lm_head"
    flat = g.op1("Reshape", [hidden, g.const_i64(f"{n}/flat_shape", [-1, cfg.n_embd])], f"{n}/Flatten")
    weight = wte if ckpt.tied else g.weight("lm_head.weight", ckpt.weights["lm_head.weight"])
    logits = g.op1("Gemm", [flat, weight], f"{n}/Gemm", transB=1)
    batch = g.op1("Shape", [ids], f"{n}/Shape", start=0, end=1)
    shape = g.op1("Concat", [batch, g.const_i64(f"{n}/tail", [-1, cfg.vocab_size])], f"{n}/Concat", axis=0)
    g.op("Reshape", [logits, shape], f"{n}/Reshape", outputs=[IO.logits])
