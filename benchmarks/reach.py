"""The reach report: one export of the bundled model in every runtime it is claimed for.

    python -m benchmarks.reach [--quick] [--out benchmarks/results/reach]

Each variant (contrib fp32 / int8 / int4, portable int8) is exported once; each runtime loads it as it is
and answers the same prompts greedily: Python onnxruntime (this package), onnxruntime-genai (its Python
binding over the same C library its C#, Java and mobile packages use), onnxruntime-node and onnxruntime-web
(wasm, 1 thread, headless Chromium) through dialogpt_onnx/web/dialogpt.mjs. Per pair: does it load, are its
greedy tokens the Python runtime's, the median decode ms/token after a 64-token prompt (and that prompt's
prefill), and what a browser downloads. Writes results.json, report.md and reach.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .machine import machine_info
from .outdir import report_dir, write_results

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": ("contrib", "fp32"), "int8": ("contrib", "int8"), "int4": ("contrib", "int4"),
            "portable-int8": ("portable", "int8")}
RUNTIMES = ("python", "genai", "node", "chromium")
NODE_VERSION = "1.30.0"
PROMPTS = ["Hi! Do you like music?", "Who is your favorite band?", "I like jazz more."]
FULL = {"runs": 5, "steps": 32, "reply": 24}
QUICK = {"runs": 2, "steps": 8, "reply": 8}

# the same measurement in JS (Node and the page): prefill 64 tokens, then `steps` single-token decodes
JS_MEASURE = """
export async function measure(m, prompts, runs, steps, reply) {
  const tokens = [];
  for (const t of prompts) tokens.push(await m.generate(m.tokenizer.encodeTurn(t), { max_new_tokens: reply }));
  const p = Array.from({ length: 64 }, (_, i) => 1000 + i), decode = [], prefill = [];
  for (let r = 0; r < runs; r++) {
    let t0 = performance.now();
    let { cache } = await m.forward(p, m.emptyCache());
    prefill.push(performance.now() - t0);
    t0 = performance.now();
    for (let i = 0; i < steps; i++) ({ cache } = await m.forward([1234], cache));
    decode.push((performance.now() - t0) / steps);
  }
  return { tokens, decode, prefill };
}
"""
NODE_MAIN = """
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { DialoGPT } from "./dialogpt.mjs";
import { measure } from "./measure.mjs";
const [dir, npmDir, args] = [process.argv[2], process.argv[3], JSON.parse(process.argv[4])];
const ort = createRequire(join(npmDir, "/"))("onnxruntime-node");
const json = (f) => JSON.parse(readFileSync(join(dir, f), "utf8"));
const m = await DialoGPT.load(ort, { model: join(dir, "model.onnx"), manifest: json("manifest.json"),
  tokenizer: json("tokenizer.json"), sessionOptions: { intraOpNumThreads: 2, interOpNumThreads: 1 } });
console.log(JSON.stringify(await measure(m, args.prompts, args.runs, args.steps, args.reply)));
"""


def npm_packages(where: Path) -> Path:
    """onnxruntime-node and onnxruntime-web from npm (once per cache dir)."""
    from dialogpt_onnx.web.site import ORT_WEB_VERSION

    if not (where / "node_modules" / "onnxruntime-web").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        (where / "package.json").write_text('{"private": true}')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"onnxruntime-node@{NODE_VERSION}",
                        f"onnxruntime-web@{ORT_WEB_VERSION}"], cwd=where, check=True, capture_output=True,
                       env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}, timeout=900)
    return where


def python_run(model_dir: Path, p: dict) -> dict:
    import numpy as np

    from dialogpt_onnx import runtime

    m = runtime.load(model_dir, threads=2)
    tokens = [m.generate(m.encode_turn(t), max_new_tokens=p["reply"]).ids for t in PROMPTS]
    decode, prefill = [], []
    for _ in range(p["runs"]):
        c = m.graph.new_cache()
        c.reset(1)
        t0 = time.perf_counter()
        c.prefill([list(range(1000, 1064))])
        prefill.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        for _ in range(p["steps"]):
            c.step(np.array([1234]))
        decode.append((time.perf_counter() - t0) * 1000 / p["steps"])
    return {"tokens": tokens, "decode": decode, "prefill": prefill}


def genai_run(model_dir: Path, p: dict) -> dict:
    from dialogpt_onnx.runtime.text import EOS_TOKEN_ID

    if not (Path(model_dir) / "genai_config.json").is_file():
        return {"error": "no genai_config.json (an export older than this package?)"}
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)

    def run(ids: list[int], n: int, to_the_end: bool) -> tuple[list[int], float, float]:
        """Greedy tokens (ending at <|endoftext|> unless to_the_end), prefill ms, ms per decoded token."""
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n, no_repeat_ngram_size=0,
                                  min_length=len(ids) + n if to_the_end else 0)
        g, out = og.Generator(model, params), []
        t0 = time.perf_counter()
        g.append_tokens(ids)
        first = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        while not g.is_done() and len(out) < n:
            g.generate_next_token()
            out.append(int(g.get_next_tokens()[0]))
            if out[-1] == EOS_TOKEN_ID and not to_the_end:
                break
        return out, first, (time.perf_counter() - t0) * 1000 / max(len(out) - 1, 1)  # the first needs no run

    tokens = [run(list(tokenizer.encode(t + "<|endoftext|>")), p["reply"], False)[0] for t in PROMPTS]
    timed = [run(list(range(1000, 1064)), p["steps"] + 1, True) for _ in range(p["runs"])]
    return {"tokens": tokens, "prefill": [t[1] for t in timed], "decode": [t[2] for t in timed]}


def js_files(where: Path) -> None:
    shutil.copyfile(ROOT / "dialogpt_onnx" / "web" / "dialogpt.mjs", where / "dialogpt.mjs")
    (where / "measure.mjs").write_text(JS_MEASURE)


def node_run(model_dir: Path, p: dict, npm: Path, work: Path) -> dict:
    js_files(work)
    (work / "main.mjs").write_text(NODE_MAIN)
    args = json.dumps({"prompts": PROMPTS, **p})
    r = subprocess.run(["node", str(work / "main.mjs"), str(model_dir), str(npm), args], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(r.stdout)


def chromium_run(model_dir: Path, p: dict, npm: Path, work: Path, driver) -> dict:
    from dialogpt_onnx.web.site import ORT_WEB_FILES, make_site

    site = make_site(model_dir, work / "site", str(npm / "node_modules" / "onnxruntime-web"))
    js_files(site)
    handler = functools.partial(_Quiet, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        ready = driver.execute_async_script("window.appReady.then(() => arguments[0]('ok'), "
                                            "(e) => arguments[0](String(e)))")
        if ready != "ok":
            return {"error": str(ready)[:200]}
        out = driver.execute_async_script(f"""const done = arguments[0];
            import('./measure.mjs').then((mod) => mod.measure(window.app.model, {json.dumps(PROMPTS)},
              {p['runs']}, {p['steps']}, {p['reply']})).then(done, (e) => done(String(e)));""")
        if isinstance(out, str):
            return {"error": out[:200]}
        out["download_bytes"] = sum((site / f).stat().st_size for f in ("model.onnx", "tokenizer.json",
                                                                         "manifest.json", "dialogpt.mjs")) + \
            sum((site / "ort" / f).stat().st_size for f in ORT_WEB_FILES)
        return out
    finally:
        server.shutdown()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    d.set_script_timeout(900)
    return d


def summarize(r: dict, reference: dict | None) -> dict:
    if "error" in r:
        return {"loads": False, "error": r["error"]}
    return {"loads": True, "same_tokens": reference is not None and r["tokens"] == reference["tokens"],
            "decode_ms": statistics.median(r["decode"]), "decode_range": [min(r["decode"]), max(r["decode"])],
            "prefill_ms": statistics.median(r["prefill"]), **({"download_bytes": r["download_bytes"]}
                                                               if "download_bytes" in r else {})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reach", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/reach")
    ap.add_argument("--npm-dir", default=str(Path.home() / ".cache" / "dialogpt-onnx" / "reach-npm"))
    a = ap.parse_args(argv)
    out = report_dir(ap, a.out)
    p = QUICK if a.quick else FULL
    from dialogpt_onnx.export import ExportOptions, export_model

    npm = npm_packages(Path(a.npm_dir))
    run: dict = {"machine": machine_info(), "params": p, "node": NODE_VERSION, "results": {}, "sizes": {}}
    run["machine"]["chromium"] = subprocess.run(["chromium", "--version"], capture_output=True,
                                                text=True).stdout.strip()
    driver = _driver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (graph, variant) in VARIANTS.items():
                model_dir = Path(tmp) / name
                export_model(ROOT / "models" / "chat-8x256", model_dir, ExportOptions(
                    variant=variant, graph=graph, progress=False, n_prompts=1, parity_tokens=8))
                run["sizes"][name] = (model_dir / "model.onnx").stat().st_size
                work = Path(tmp) / f"work-{name}"
                work.mkdir()
                raw = {"python": python_run(model_dir, p)}
                print(f"{name}: python done", flush=True)
                try:
                    raw["genai"] = genai_run(model_dir, p)
                except Exception as e:  # noqa: BLE001 - a runtime that refuses the export is a result
                    raw["genai"] = {"error": str(e).splitlines()[0][:200]}
                raw["node"] = node_run(model_dir, p, npm, work)
                raw["chromium"] = chromium_run(model_dir, p, npm, work, driver)
                run["results"][name] = {rt: summarize(raw[rt], raw["python"]) for rt in RUNTIMES}
                print(f"{name}: " + ", ".join(f"{rt} {v.get('decode_ms', float('nan')):.2f} ms"
                                              for rt, v in run["results"][name].items()), flush=True)
    finally:
        driver.quit()
    write_results(out, run, report, plot)
    return 0


def report(run: dict, out: Path) -> None:
    m = run["machine"]
    lines = ["# Reach: one export, every runtime", "",
             f"{m['date']} · {m['cpu']} ({', '.join(m['flags'])}), {m['cores']} cores · onnxruntime "
             f"{m['versions'].get('onnxruntime')} (Python), onnxruntime-genai {_version('onnxruntime-genai')}, "
             f"onnxruntime-node {run['node']}, onnxruntime-web wasm in {m.get('chromium', 'Chromium')} (1 thread) · "
             f"bundled model (models/chat-8x256), median of {run['params']['runs']} runs of "
             f"{run['params']['steps']} decode steps after a 64-token prompt, 2 threads natively.", "",
             "| variant | runtime | loads | greedy tokens = Python's | decode ms/token (range) | 64-token prefill ms "
             "| vs Python |", "|---|---|---|---|---|---|---|"]
    for name, by in run["results"].items():
        base = by["python"].get("decode_ms")
        for rt, r in by.items():
            if not r["loads"]:
                lines.append(f"| {name} | {rt} | no: {r['error']} | | | | |")
                continue
            lo, hi = r["decode_range"]
            ratio = f"{r['decode_ms'] / base:.2f}×" if base else ""
            lines.append(f"| {name} | {rt} | yes | {'yes' if r['same_tokens'] else 'NO'} | {r['decode_ms']:.2f} "
                         f"({lo:.2f}–{hi:.2f}) | {r['prefill_ms']:.1f} | {ratio} |")
    lines += ["", "Browser download (model + tokenizer + manifest + JS runtime + onnxruntime-web wasm):", ""]
    for name, by in run["results"].items():
        b = by["chromium"].get("download_bytes")
        if b:
            lines.append(f"- {name}: {b / 1e6:.1f} MB (model.onnx {run['sizes'][name] / 1e6:.1f} MB)")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "absent"


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(run["results"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(RUNTIMES)
    for j, rt in enumerate(RUNTIMES):
        vals = [run["results"][n][rt].get("decode_ms", 0) for n in names]
        ax.bar([i + j * width for i in range(len(names))], vals, width, label=rt)
    ax.set_xticks([i + width * (len(RUNTIMES) - 1) / 2 for i in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("decode ms/token (log)")
    ax.set_title(f"One export per variant, every runtime ({run['machine']['date'][:10]}, {run['machine']['cpu']})",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reach.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
