"""Why int4's first token lags int8's on some CPUs: one layer's MatMul per kernel, by prompt length.

    python -m benchmarks.studies.int4_prefill [--rows 1,8,32,64,128] [--shapes 768x3072,3072x768] --out DIR

The exports' own layer kernels on one MatMul of DialoGPT's shapes (K x N weights, random): the int8
variant's row-wise `MatMulIntegerToFloat` and int4's `MatMulNBits` (accuracy level 4: int8 activations)
in blocks of 32 and 128, built by export.quantize as the exports build them. Each runs M activation rows
(M = the tokens of a prompt; 1 = a decode step) in turns, rounds interleaved; a figure is the median over
--rounds of the fastest of 10 calls. A kernel that reuses each weight across rows costs far less than M
times its one-row time; one that streams the weights once per row costs about M times. Writes
DIR/int4_prefill.json, DIR/report.md and DIR/int4_prefill.png (µs per row against M).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.machine import machine_info
from benchmarks.outdir import report_dir
from dialogpt_onnx.export.onnx_ops import GraphEditor
from dialogpt_onnx.export.quantize import nbits_layers, quiet, rowwise_int8
from dialogpt_onnx.runtime import ort_graph

KERNELS = ("int8 row-wise", "int4 b32", "int4 b128")


def one_matmul(weight: np.ndarray, kernel: str) -> bytes:
    """A graph of one quantized MatMul (named as a layer's, with the input_ids the row-wise pass reads)."""
    k, n = weight.shape
    ed = GraphEditor()
    ed.input("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    ed.input("x", onnx.TensorProto.FLOAT, ["b", "s", k])
    ed.output("y", onnx.TensorProto.FLOAT, ["b", "s", n])
    ed.op("MatMul", ["x", ed.weight("w", weight)], "/model/layers.0/mlp/fc/MatMul", outputs=["y"])
    with quiet():
        if kernel == "int8 row-wise":
            ed = rowwise_int8(ed, reduce_range=True)
        else:
            ed = nbits_layers(ed, 4, int(kernel.split("b")[-1]), 4, scale_dtype="float16")
    return ed.model().SerializeToString()


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if ort_graph.SPIN_DURATION_US is not None:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(ort_graph.SPIN_DURATION_US))
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _fastest(sess: ort.InferenceSession, feed: dict[str, np.ndarray], calls: int = 10) -> float:
    sess.run(None, feed)
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def measure(shapes: list[tuple[int, int]], rows: list[int], rounds: int, threads: int) -> list[dict]:
    rng = np.random.default_rng(0)
    sessions = {}
    for k, n in shapes:
        weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        for kernel in KERNELS:
            sessions[(k, n, kernel)] = _session(one_matmul(weight, kernel), threads)
    times: dict[tuple, list[float]] = {}
    for r in range(rounds):
        for m in rows:
            for (k, n, kernel), sess in sessions.items():
                feed = {"input_ids": np.zeros((1, m), np.int64),
                        "x": rng.standard_normal((1, m, k)).astype(np.float32)}
                times.setdefault((k, n, kernel, m), []).append(_fastest(sess, feed))
        print(f"round {r + 1}/{rounds}", flush=True)
    return [{"K": k, "N": n, "kernel": kernel, "rows": m, "us": round(statistics.median(v), 1),
             "us_min": round(min(v), 1), "us_max": round(max(v), 1)} for (k, n, kernel, m), v in times.items()]


def report(results: list[dict], machine: dict) -> str:
    lines = [f"# One layer MatMul by prompt rows ({machine.get('cpu', '?')}, {machine.get('cores')} cores, "
             f"{' '.join(machine.get('flags', []))}; {machine.get('date', '')})", "",
             "µs per call, median of rounds (fastest of 10 calls each); `× 1 row` = the call's cost over its "
             "one-row cost (a ratio of M: each row costs a whole one-row call).", "",
             "| K×N | kernel | " + " | ".join(f"M={m}" for m in sorted({r['rows'] for r in results})) + " |",
             "|---|---|" + "---|" * len({r["rows"] for r in results})]
    by = {(r["K"], r["N"], r["kernel"], r["rows"]): r for r in results}
    for k, n in sorted({(r["K"], r["N"]) for r in results}):
        for kernel in KERNELS:
            one = by[(k, n, kernel, min(r["rows"] for r in results))]["us"]
            cells = [f"{by[(k, n, kernel, m)]['us']:.0f} (×{by[(k, n, kernel, m)]['us'] / one:.1f})"
                     for m in sorted({r["rows"] for r in results})]
            lines.append(f"| {k}×{n} | {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["K"], r["N"]) for r in results})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.6), squeeze=False)
    for ax, (k, n) in zip(axes[0], shapes, strict=True):
        for kernel in KERNELS:
            pts = sorted((r["rows"], r["us"] / r["rows"]) for r in results
                         if (r["K"], r["N"], r["kernel"]) == (k, n, kernel))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kernel)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows (prompt tokens)")
        ax.set_ylabel("µs per row")
        ax.set_title(f"{k}×{n}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.int4_prefill",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rows", default="1,8,32,64,128", help="activation rows per call (prompt tokens)")
    p.add_argument("--shapes", default="768x3072,3072x768", help="K x N weights (DialoGPT-small's MLP)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        rows = sorted({int(x) for x in a.rows.split(",")})
        shapes = [(int(s.split("x")[0]), int(s.split("x")[1])) for s in a.shapes.split(",")]
    except (ValueError, IndexError):
        p.error("--rows takes integers (1,8,64) and --shapes K x N pairs (768x3072)")
    if min(rows) < 1 or a.rounds < 1 or any(k % 128 or n < 1 for k, n in shapes):
        p.error("rows and rounds must be positive, and K a multiple of 128")
    out = report_dir(p, a.out)
    machine = machine_info()
    results = measure(shapes, rows, a.rounds, a.threads)
    (out / "int4_prefill.json").write_text(json.dumps({"machine": machine, "threads": a.threads, "rounds": a.rounds,
                                                      "results": results}, indent=1))
    text = report(results, machine)
    (out / "report.md").write_text(text)
    plot(results, out / "int4_prefill.png")
    print(text + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
