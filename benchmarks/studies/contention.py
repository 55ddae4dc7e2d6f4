"""Decode speed with other work on the CPU: onnxruntime's thread settings under contention.

    python -m benchmarks.studies.contention EXPORT_DIR [--busy 0,1,2] [--settings ...] --out DIR

Phones and laptops run other work beside a chat. onnxruntime's intra-op threads spin while they wait for
work (`session.intra_op.allow_spinning`, on by default); on a busy CPU the spinning threads compete with
the busy processes and with each other. The runtime bounds the spin (`ort_graph.SPIN_DURATION_US`, 30 µs,
chosen here); every setting below starts from onnxruntime's own defaults. For each count of busy
processes (each a pure-Python loop pinned to nothing, as an app's own work would be), each setting
decodes in a fresh process: the median ms/token of 32 greedy tokens after a 64-token dialogue history,
over --repeats calls after one warm-up. Writes
DIR/contention.json and DIR/report.md, and prints the table. With --openvino, OpenVINO GenAI's int8 export
of the same model decodes beside them (2 threads, its own defaults). With --node, each setting also runs in
onnxruntime-node through dialogpt_onnx/web/dialogpt.mjs (its entries as the session's `extra` options, which
replace the JS runtime's own; needs node and npm), as `node-SETTING`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.outdir import report_dir

# name -> (threads, session config entries on onnxruntime's own defaults, what it is for the report)
SETTINGS: dict[str, tuple[int, dict[str, str], str]] = {
    "t2-spin": (2, {}, "2 intra-op threads, spinning by iteration count (onnxruntime's default)"),
    "t2-nospin": (2, {"session.intra_op.allow_spinning": "0"}, "session.intra_op.allow_spinning 0"),
    "t2-spin1ms": (2, {"session.intra_op.spin_duration_us": "1000", "session.intra_op.spin_backoff_max": "8"},
                   "spin at most 1000 µs (session.intra_op.spin_duration_us), backoff max 8"),
    "t2-spin100us": (2, {"session.intra_op.spin_duration_us": "100"}, "spin at most 100 µs"),
    "t2-spin30us": (2, {"session.intra_op.spin_duration_us": "30"}, "spin at most 30 µs (the runtime's default)"),
    "t1": (1, {}, "one thread"),
}

_PROBE = r"""
import json, statistics, sys, time
from dialogpt_onnx.runtime import ort_graph
threads, entries, path, repeats = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ort_graph.SPIN_DURATION_US = None  # each setting's entries on onnxruntime's own defaults
base = ort_graph._options
def options(t, optimization):
    so = base(t, optimization)
    for k, v in entries.items():
        so.add_session_config_entry(k, v)
    return so
ort_graph._options = options  # the study's one lever: the session options the runtime builds
from pathlib import Path
from benchmarks.__main__ import dialogue_tokens
if entries.pop("engine", "") == "openvino":
    from benchmarks.openvino_engine import OpenVinoGenAI
    e = OpenVinoGenAI("int8")
else:
    from benchmarks.engines import Ours
    e = Ours("int8")
e.load(Path(path), threads)
ids, ms = dialogue_tokens(64), []
for r in range(repeats + 1):
    out, first = e.generate(ids, 33)
    if r:
        ms.append((time.perf_counter() - first) / 32 * 1e3)
print(json.dumps(ms))
"""


_NODE_PROBE = """
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DialoGPT } from "./dialogpt.mjs";
import { measure } from "./measure.mjs";
const [dir, npmDir, threads, extra, repeats] = process.argv.slice(2);
const ort = createRequire(join(npmDir, "/"))("onnxruntime-node");
const json = (f) => JSON.parse(readFileSync(join(dir, f), "utf8"));
const m = await DialoGPT.load(ort, { model: join(dir, "model.onnx"), manifest: json("manifest.json"),
  tokenizer: json("tokenizer.json"),
  sessionOptions: { intraOpNumThreads: Number(threads), interOpNumThreads: 1, extra: JSON.parse(extra) } });
const { decode } = await measure(m, [], Number(repeats) + 1, 32, 1);  // 64-token history, 32 tokens
console.log(JSON.stringify(decode.slice(1)));
"""


def _node_probe(work: Path) -> Path:
    """The JS runtime and the probe in `work`, written once for every node run."""
    from benchmarks.reach import js_files

    js_files(work)
    (work / "probe.mjs").write_text(_NODE_PROBE)
    return work / "probe.mjs"


def _busy() -> None:  # an app's own work: a core's worth of pure-Python arithmetic
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def measure(export: Path, settings: list[str], busy: int, repeats: int,
            openvino: Path | None = None, node: tuple[Path, Path] | None = None) -> dict[str, list[float]]:
    """Decode ms/token per setting beside `busy` busy processes; `node`: (the node probe, the npm packages' dir)."""
    procs = [mp.Process(target=_busy, daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.5)
        out = {}
        runs = [(name, *SETTINGS[name][:2], export) for name in settings]
        if openvino:  # the peer beside them, same threads, its own defaults
            runs.append(("openvino-t2", 2, {"engine": "openvino"}, openvino))
        if node:
            runs += [(f"node-{name}", *SETTINGS[name][:2], export) for name in settings]
        for name, threads, entries, model in runs:
            command = [sys.executable, "-c", _PROBE, str(threads), json.dumps(entries), str(model), str(repeats)]
            if node and name.startswith("node-"):
                probe, npm = node
                command = ["node", str(probe), str(model), str(npm), str(threads), json.dumps(entries), str(repeats)]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if proc.returncode:
                raise RuntimeError(f"{name}: {proc.stderr[-1500:]}")
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  busy {busy}: {name}: {statistics.median(out[name]):.2f} ms/token", file=sys.stderr)
        return out
    finally:
        for p in procs:
            p.terminate()
            p.join()


def report(run: dict) -> str:
    busy = [str(b) for b in run["busy"]]
    m = run["machine"]
    lines = [f"# Decode under contention ({run['export']})", "",
             f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])}", "",
             "; ".join(f"{k}: {SETTINGS[k][2]}" for k in run["settings"] if k in SETTINGS), "",
             "decode ms/token, median (min–max) of the calls; each setting a fresh process", "",
             "| setting | " + " | ".join(f"{b} busy" for b in busy) + " |", "|---|" + "---|" * len(busy)]
    for name in run["settings"]:
        cells = []
        for b in busy:
            ms = run["results"][b][name]
            cells.append(f"{statistics.median(ms):.2f} ({min(ms):.2f}–{max(ms):.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(run: dict, path: Path) -> None:
    """Grouped bars: decode ms/token (median, min-max whiskers) per busy count, one bar per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    busy, names = [str(b) for b in run["busy"]], run["settings"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(names):
        ms = [run["results"][b][name] for b in busy]
        med = [statistics.median(m) for m in ms]
        err = [[x - min(m) for x, m in zip(med, ms, strict=True)], [max(m) - x for x, m in zip(med, ms, strict=True)]]
        ax.bar([j + i * width for j in range(len(busy))], med, width, yerr=err, capsize=2, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(busy))], [f"{b} busy" for b in busy])
    ax.set_ylabel("decode ms/token (lower is better)")
    ax.set_title(f"Decode beside busy processes, {run['machine']['cpu']}, {run['machine']['date'][:10]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path)
    p.add_argument("--busy", default="0,1,2", help="counts of busy processes beside the decode")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma list of: " + ", ".join(SETTINGS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--openvino", type=Path, help="an OpenVINO int8 export of the same model, measured beside")
    p.add_argument("--node", action="store_true", help="each setting in onnxruntime-node too (node, npm)")
    p.add_argument("--npm-dir", default=str(Path.home() / ".cache" / "dialogpt-onnx" / "reach-npm"),
                   help="where onnxruntime-node is installed from npm (once), as benchmarks.reach")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting {unknown[0]!r}: choose from {', '.join(SETTINGS)}")
    out = report_dir(p, a.out)
    busy = [int(b) for b in a.busy.split(",")]
    node = None
    if a.node:
        from benchmarks.reach import npm_packages

        (out / "node").mkdir(exist_ok=True)
        node = (_node_probe(out / "node"), npm_packages(Path(a.npm_dir)))
    results = {str(b): measure(a.export, settings, b, a.repeats, a.openvino, node) for b in busy}
    run = {"export": str(a.export), "machine": machine_info(), "busy": busy, "settings": settings,
           "repeats": a.repeats, "results": results}
    if a.openvino:
        run["settings"].append("openvino-t2")
    if node:
        run["settings"] += [f"node-{name}" for name in settings]
        shutil.rmtree(out / "node")
    (out / "contention.json").write_text(json.dumps(run, indent=1))
    text = report(run)
    (out / "report.md").write_text(text + "\n![decode under contention](contention.png)\n")
    plot(run, out / "contention.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
