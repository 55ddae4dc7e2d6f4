"""Which part of a quantization costs greedy agreement? One part at a time, on a trained model.

    python -m benchmarks.studies.quant_ablation [CHECKPOINT] [--specs A,B,...] [--contexts 200] [--out DIR]

CHECKPOINT (default: the bundled model) is exported once in fp32; each spec then quantizes parts of that
graph and is measured against it: greedy agreement over 32 new tokens (EOS banned) on held-out
Topical-Chat contexts (the fp32 ONNX graph's replies equal PyTorch's: benchmarks.quality), mean KL divergence
from the fp32 graph over real replies (teacher forced, as benchmarks.scoreboard) and decode ms/token (specs
interleaved, median of 3). A spec joins parts with "+":

    head:BITS:BLOCK:ACC          the tied head / embedding (MatMulNBits + GatherBlockQuantized)
    headr:BITS:BLOCK:ACC         the same with each row's int8 residual as a second row
    rowwise7 | rowwise8          layers, int8 row-wise activations, 7-bit / 8-bit per-column weights
    rowwise7r | rowwise8r        the same with each row's int8 residual as a second row (~15-bit activations)
    rowwise7r@NAME               ... the residual row only in the layers' MatMuls whose node name holds NAME
    nbits:BITS:BLOCK:ACC[:ALGO]  layers, MatMulNBits; ALGO rtn (default), hqq, or gptq (calibrated on
                                 shipped Topical-Chat valid_rare dialogue)
    nbits:BITS:BLOCK:ACC@NAME    only the layers' MatMuls whose node name holds NAME (attn/qkv, attn/o_proj,
                                 mlp/fc, mlp/proj): mixed precision, e.g. nbits:8:32:4@mlp/proj+nbits:4:32:4

ACC is MatMulNBits' accuracy_level: 4 quantizes activations to int8 per block, 0 keeps them fp32.
Writes results.json and report.md. The exporter's defaults are chosen with benchmarks.quality; this
tool says why they fall short where they do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from dialogpt_onnx.runtime.graph_io import CONTRIB_IO

from ..machine import machine_info
from ..outdir import report_dir

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPECS = ("head:8:128:4", "head:8:32:4", "rowwise7", "rowwise8", "nbits:8:32:4", "nbits:8:32:0",
                 "head:8:128:4+rowwise7", "head:8:32:4+nbits:8:32:4", "head:8:32:4+nbits:8:16:4",
                 "head:8:32:4+nbits:4:32:4", "head:8:32:4+nbits:4:32:0", "head:8:32:4+nbits:4:32:4:hqq",
                 "head:8:32:4+nbits:4:32:4:gptq", "head:8:128:4+nbits:4:128:4")


class CalibrationDialogue(CalibrationDataReader):
    """onnxruntime's CalibrationDataReader for the contrib graph: one held-in dialogue window per call,
    prefilled into an empty cache (the feeds ContribCache.prefill gives a single row)."""

    def __init__(self, model: onnx.ModelProto, windows: list[list[int]]) -> None:
        named = set(CONTRIB_IO.inputs.values())  # the rest are the layers' past K/V, [1, heads, n, head_dim]
        self.past = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim])
                     for i in model.graph.input if i.name not in named]
        self.windows = iter(windows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        ids = next(self.windows, None)
        if ids is None:
            return None
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64), "position_ids": np.arange(n, dtype=np.int64)[None],
                 "attention_mask": np.ones((1, n), np.int64)}
        feeds = {CONTRIB_IO.inputs[k]: v for k, v in feeds.items()}
        for name, (_, heads, _, head_dim) in self.past:
            feeds[name] = np.zeros((1, heads, n, head_dim), np.float32)
        return feeds


def calibration_windows(tok, eos: int, n: int = 48, length: int = 128) -> list[list[int]]:
    from dialogpt_onnx.corpora import topical_chat
    from dialogpt_onnx.training.evaluate import reply_pairs

    pairs = reply_pairs(tok, topical_chat("valid_rare")[:30], eos)
    return [(c + t)[-length:] for c, t in pairs[::6]][:n]


def _gptq(model: onnx.ModelProto, bits: int, block: int, acc: int, windows: list[list[int]]) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=CalibrationDialogue(model, windows), block_size=block,
                                    op_types_to_quantize=("MatMul",))
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=False, accuracy_level=acc,
                             op_types_to_quantize=("MatMul",), algo_config=cfg)
    q.process()
    return q.model.model


def apply_spec(model: onnx.ModelProto, spec: str, windows: list[list[int]]) -> onnx.ModelProto:
    from dialogpt_onnx.export.onnx_ops import GraphEditor
    from dialogpt_onnx.export.quantize import matmuls_named, nbits_layers, quantize_tied_head, quiet, rowwise_int8

    ed = GraphEditor.edit(model)
    with quiet():
        for part in spec.split("+"):
            kind, *a = part.split(":")
            if kind in ("head", "headr"):
                ed = quantize_tied_head(ed, int(a[0]), int(a[1]), int(a[2]), residual=kind == "headr")
            elif kind.partition("@")[0] in ("rowwise7", "rowwise8", "rowwise7r", "rowwise8r"):
                kind, at, name = kind.partition("@")
                if at and not kind.endswith("r"):
                    raise ValueError(f"@NAME picks residual rows: {kind}r@{name}, not {part!r}")
                residual = (name,) if kind.endswith("r") else ()
                ed = rowwise_int8(ed, reduce_range=kind.startswith("rowwise7"), residual_layers=residual)
            elif kind == "nbits" and a[3:] == ["gptq"]:
                ed = GraphEditor.edit(_gptq(ed.model(), int(a[0]), int(a[1]), int(a[2]), windows))
            elif kind == "nbits" and "@" in part:
                acc, name = a[2].split("@", 1)
                ed = nbits_layers(ed, int(a[0]), int(a[1]), int(acc), nodes=matmuls_named(ed, (name,)))
            elif kind == "nbits":
                ed = nbits_layers(ed, int(a[0]), int(a[1]), int(a[2]), algorithm=(a[3:] or ["rtn"])[0])
            else:
                raise ValueError(f"unknown part {part!r} in spec {spec!r}")
    return ed.model()


def write_variant(fp32_dir: Path, model: onnx.ModelProto, out: Path) -> Path:
    """A model dir: the fp32 dir's files (tokenizer, runtime configs) and manifest, with this graph and its size."""
    import shutil

    from dialogpt_onnx.runtime.manifest import sha256

    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((fp32_dir / "manifest.json").read_text())
    for name in manifest["files"]:
        if name != "model.onnx":
            shutil.copy(fp32_dir / name, out / name)
    onnx.save(model, out / "model.onnx")
    manifest["file_sizes"]["model.onnx"] = (out / "model.onnx").stat().st_size
    manifest["files"]["model.onnx"] = sha256(out / "model.onnx")
    manifest["quantization"] = {"ablation_spec": out.name}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    from dialogpt_onnx import runtime
    from dialogpt_onnx.export import ExportOptions, export_model
    from dialogpt_onnx.runtime.cli import OneLineParser

    from .. import fidelity
    from ..quality import BUNDLED, FULL, held_out, speed
    from ..scoreboard import compare

    ap = OneLineParser(prog="python -m benchmarks.studies.quant_ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(BUNDLED))
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS))
    ap.add_argument("--contexts", type=int, default=200)
    ap.add_argument("--replies", type=int, default=100, help="real replies scored for the KL divergence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/quant-ablation")
    a = ap.parse_args(argv)
    out = report_dir(ap, a.out)
    fp32_dir = out / "models" / "fp32"
    export_model(a.checkpoint, fp32_dir, ExportOptions(variant="fp32", overwrite=True, progress=False, n_prompts=1,
                                                       parity_tokens=8, threads=a.threads))
    ref = runtime.load(fp32_dir, threads=a.threads)
    pairs, contexts, _ = held_out(ref.tokenizer, ref.eos, {**FULL, "contexts": a.contexts})
    pairs = [(c, r[:32]) for c, r in pairs[:: max(1, len(pairs) // a.replies)][: a.replies]]
    ref_cache = ref.graph.new_cache()
    ref_logits = [fidelity.teacher_forced_logits(ref_cache, c, r) for c, r in pairs]
    windows = calibration_windows(ref.tokenizer, ref.eos)
    reference = fidelity.greedy_replies(ref, contexts, 32)
    fp32 = onnx.load(fp32_dir / "model.onnx")
    results: dict[str, dict] = {}
    models = {"fp32": ref}
    for spec in tqdm(a.specs.split(","), desc="specs", unit="spec"):
        graph = onnx.ModelProto()
        graph.CopyFrom(fp32)  # onnxruntime's quantizers rewrite the model they are given in place
        d = write_variant(fp32_dir, apply_spec(graph, spec, windows), out / "models" / spec.replace(":", "_"))
        m = models[spec] = runtime.load(d, threads=a.threads)
        cache = m.graph.new_cache()
        kld = np.concatenate([compare(lr, fidelity.teacher_forced_logits(cache, c, r), r)["kld"]
                              for lr, (c, r) in zip(ref_logits, pairs, strict=True)])
        results[spec] = {**fidelity.agreement(fidelity.greedy_replies(m, contexts, 32), reference),
                         "mean_kld": float(kld.mean()), "size_mb": (d / "model.onnx").stat().st_size / 1e6}
    prompt = [t for c in contexts for t in c][:64]
    for name, s in speed(models, prompt, 64, 3).items():
        results.setdefault(name, {"token_agreement": 1.0, "identical_replies": 1.0, "mean_kld": 0.0,
                                  "size_mb": (fp32_dir / "model.onnx").stat().st_size / 1e6})
        results[name]["decode_ms_per_token"] = s["decode"]
    run = {"checkpoint": a.checkpoint, "contexts": len(contexts), "machine": machine_info(), "threads": a.threads,
           "results": results}
    (out / "results.json").write_text(json.dumps(run, indent=1))
    m = run["machine"]
    lines = [f"# Quantization ablation: {a.checkpoint}", "",
             f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · {a.threads} threads",
             "", f"Greedy agreement with the fp32 graph over 32 new tokens on {len(contexts)} held-out Topical-Chat "
             f"contexts; mean KL divergence from it over {len(pairs)} real replies (teacher forced); decode after a "
             "64-token history, median (min–max) of 3.", "",
             "| spec | token agreement | identical replies | mean KLD | decode ms/token | model.onnx MB |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        d = r["decode_ms_per_token"]
        lines.append(f"| {name} | {r['token_agreement']:.3f} | {r['identical_replies']:.3f} | {r['mean_kld']:.6f} "
                     f"| {d['median']:.2f} "
                     f"({d['min']:.2f}–{d['max']:.2f}) | {r['size_mb']:.1f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
