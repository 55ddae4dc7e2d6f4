"""What an app pays before and around decoding, against llama.cpp: import, load, first token and memory.

    python -m benchmarks.footprint [--models chat,small] [--runs 5] [--threads 2] [--quick] [--out DIR]

Every measurement is a fresh process (benchmarks.footprint_probe): import time of the engine's library,
load time, time to the first token of a 64-token prompt, then RSS (and its anonymous / file-backed parts)
after load, after a 32-token reply and after a second chat of the same length, and the peak. Rows are
alternated within each of --runs repeats; medians and ranges. Models: the bundled chat-8x256 and
DialoGPT-small's shape with random weights. Rows for ours: each variant as the runtime loads it by default,
and one row per lever (a setting the default does not use). Then the same export held by 4 processes at once
(PSS: shared pages split among them) and 4 models of one export in one process. Writes results.json,
report.md and footprint.png.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from .engines import dir_size
from .machine import machine_info
from .outdir import report_dir, write_results

# (row name, engine family, artifact kind, lever)
ROWS = [
    ("ours int8", "ours", "ours-int8", "default"),
    ("ours int8, no integrity check", "ours", "ours-int8", "no-verify"),
    ("ours int8, basic graph optimization", "ours", "ours-int8", "basic"),
    ("ours int8, no pre-packing", "ours", "ours-int8", "no-prepacking"),
    ("ours int8, weight cache off (pre-packed in memory at every load)", "ours", "ours-int8", "cache-off"),
    ("ours int8, first load on a machine (writes the weight cache)", "ours", "ours-int8", "first-load"),
    ("ours int8, 4 models of one export", "ours", "ours-int8", "four-models"),
    ("ours int4", "ours", "ours-int4", "default"),
    ("llama.cpp Q8_0", "llama.cpp", "llama.cpp-Q8_0", "default"),
    ("llama.cpp Q4_0", "llama.cpp", "llama.cpp-Q4_0", "default"),
]
QUICK_ROWS = {"ours int8", "ours int8, weight cache off (pre-packed in memory at every load)", "llama.cpp Q8_0"}
TOGETHER = ["ours int8", "ours int8, weight cache off (pre-packed in memory at every load)", "llama.cpp Q8_0"]


def prepare(model: str, work: Path, threads: int, kinds: set[str]) -> dict[str, Path]:
    """Each artifact the rows need, made once under work/ (exports are parity-checked as always)."""
    from .engines import LlamaCpp, Ours
    from .quality import BUNDLED
    from .random_checkpoint import make_random_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    src = BUNDLED if model == "chat" else work / "checkpoint"
    if model != "chat" and not (src / "config.json").is_file():
        make_random_checkpoint(model, src)
    out: dict[str, Path] = {}
    for kind in sorted(kinds):
        if kind.startswith("ours-"):
            out[kind] = Ours(kind.removeprefix("ours-")).prepare(src, work, threads)
        elif not LlamaCpp(kind.split("-")[1]).missing():
            out[kind] = LlamaCpp(kind.split("-")[1]).prepare(src, work, threads)
    return out


def probe_env(work: Path, lever: str) -> dict[str, str]:
    """The weight cache each row loads with: the run's own (warmed by the first load), none, or a new empty
    one (a machine's first load)."""
    import os
    import tempfile

    if lever in ("cache-off", "no-prepacking"):
        cache = "off"
    elif lever == "first-load":
        cache = tempfile.mkdtemp(prefix="first-load-", dir=work)
    else:
        cache = str(work / "weight-cache")
    return {**os.environ, "DIALOGPT_ONNX_CACHE": cache}


def probe(family: str, artifact: Path, lever: str, threads: int) -> dict:
    import shutil

    env = probe_env(artifact.parent, lever)
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.footprint_probe", "ours" if family == "ours" else
                               "llama", str(artifact), lever, str(threads)], capture_output=True, text=True,
                              timeout=600, env=env)
    finally:
        if lever == "first-load":
            shutil.rmtree(env["DIALOGPT_ONNX_CACHE"], ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{family} {lever}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def held_together(family: str, artifact: Path, lever: str, threads: int, n: int = 4) -> dict:
    """n probes alive at once, each after its reply: the sum of their PSS is what they cost together."""
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.footprint_probe", "ours" if family == "ours"
                               else "llama", str(artifact), lever, str(threads), "--hold"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=probe_env(artifact.parent, lever)) for _ in range(n)]
    try:
        results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        # every probe has replied and is holding: read each one's PSS now that all are alive
        pss = [_pss(p.pid) for p in procs]
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=60)
    return {"processes": n, "pss_sum_mb": sum(pss), "rss_sum_mb": sum(r["after_reply"]["VmRSS"] for r in results)}


def _pss(pid: int) -> float:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


METRICS = {  # name in results -> how to read it from one probe
    "import_s": lambda r: r["import_s"], "load_s": lambda r: r["load_s"], "ttft_s": lambda r: r["ttft_s"],
    "rss_load_mb": lambda r: r["after_load"]["VmRSS"], "rss_reply_mb": lambda r: r["after_reply"]["VmRSS"],
    "anon_reply_mb": lambda r: r["after_reply"]["RssAnon"], "file_reply_mb": lambda r: r["after_reply"]["RssFile"],
    "second_chat_mb": lambda r: r["after_second_chat"]["VmRSS"] - r["after_reply"]["VmRSS"],
    "peak_mb": lambda r: r["after_second_chat"]["VmHWM"],
}


def measure(model: str, work: Path, runs: int, threads: int, rows: list[tuple[str, str, str, str]]) -> dict:
    artifacts = prepare(model, work, threads, {kind for _, _, kind, _ in rows})
    skipped = [r[0] for r in rows if r[2] not in artifacts]
    if skipped:
        print(f"skipping {', '.join(skipped)}: llama-cpp-python is not installed (pip install -e '.[llama]')")
    rows = [r for r in rows if r[2] in artifacts]
    for kind in ("ours-int8", "ours-int4"):  # the weight cache of this run, written before any row is timed
        if kind in artifacts:
            probe("ours", artifacts[kind], "default", threads)
    raw: dict[str, list[dict]] = {name: [] for name, *_ in rows}
    errors: dict[str, str] = {}
    for _ in tqdm(range(runs), desc=f"{model}: runs", unit="run"):
        for name, family, kind, lever in rows:  # alternated: drift on a shared machine hits every row alike
            if name in errors:
                continue
            try:
                raw[name].append(probe(family, artifacts[kind], lever, threads))
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                errors[name] = str(e)
    out: dict = {"rows": {}, "errors": errors, "together": {}, "skipped": skipped}
    for name, family, kind, _ in rows:
        if raw[name]:
            out["rows"][name] = {"family": family, "file_mb": dir_size(artifacts[kind]) / 1e6,  # the suite's MB
                                 **{k: summary([f(r) for r in raw[name]]) for k, f in METRICS.items()}}
    if "ours-int8" in artifacts:
        out["restore"] = restore_vs_prefill(artifacts["ours-int8"], threads, runs)
    for name in TOGETHER:
        row = next((r for r in rows if r[0] == name), None)
        if row is not None and name not in errors:
            out["together"][name] = held_together(row[1], artifacts[row[2]], row[3], threads)
    return out


def restore_vs_prefill(model_dir: Path, threads: int, runs: int, words: int = 400) -> dict:
    """A chat primed once with a long first turn (a persona, a system text): restoring its saved file vs
    priming a new chat with the same turn (its prefill and a one-token reply), each ready for the next turn."""
    import tempfile
    import time

    from dialogpt_onnx import runtime

    model = runtime.load(model_dir, threads=threads)
    persona = " ".join(["I am a friendly robot who loves jazz, long walks and talking about books."] * (words // 14))
    options = {"greedy": True, "max_new_tokens": 1, "max_history_tokens": 900}
    restore_s, prime_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "primed.npz"
        for _ in range(runs):
            t = time.perf_counter()
            chat = model.chat(**options)
            chat.send(persona)
            prime_s.append(time.perf_counter() - t)
            chat.save(path)
            t = time.perf_counter()
            model.chat(restore=path)
            restore_s.append(time.perf_counter() - t)
        history = sum(map(len, chat.turns))
        size = path.stat().st_size
    return {"history_tokens": history, "file_mb": size / 1e6, "restore_s": summary(restore_s),
            "prefill_s": summary(prime_s)}


def _cell(s: dict, scale: float = 1.0, digits: int = 0) -> str:
    return f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f})"


def write_report(run: dict, out: Path) -> None:
    m = run["machine"]
    lines = ["# Footprint: load time and memory against llama.cpp", "",
             f"{m['date']}; {m['cpu']} ({', '.join(m['flags'])}), {m['cores']} cores; {run['threads']} threads; "
             f"median (range) of {run['runs']} runs, each a fresh process, rows alternated. Prompt 64 tokens, reply "
             "32. File MB: every file of the export (or the GGUF), 10^6 bytes. RSS = anonymous + file-backed (mapped "
             "model pages count once touched).", ""]
    for model, res in run["models"].items():
        lines += [f"## {model}", "", "| row | file MB | import s | load s | first token ms | RSS after load MB | "
                  "RSS after reply MB (anon + file) | + a second chat MB | peak MB |", "|---" * 9 + "|"]
        for name, r in res["rows"].items():
            lines.append(f"| {name} | {r['file_mb']:.1f} | {_cell(r['import_s'], 1, 2)} | {_cell(r['load_s'], 1, 3)} | "
                         f"{_cell(r['ttft_s'], 1000)} | {_cell(r['rss_load_mb'])} | {_cell(r['rss_reply_mb'])} "
                         f"({r['anon_reply_mb']['median']:.0f} + {r['file_reply_mb']['median']:.0f}) | "
                         f"{_cell(r['second_chat_mb'])} | {_cell(r['peak_mb'])} |")
        if res["together"]:
            lines += ["", "4 processes of one model, each after its reply:", "",
                      "| row | sum of RSS MB | sum of PSS MB (what they cost together) |", "|---|---|---|"]
            lines += [f"| {name} | {s['rss_sum_mb']:.0f} | {s['pss_sum_mb']:.0f} |"
                      for name, s in res["together"].items()]
        if "restore" in res:
            r = res["restore"]
            lines += ["", f"A chat primed with {r['history_tokens']} tokens of history (ours int8): restoring its "
                      f"saved file ({r['file_mb']:.1f} MB) takes {_cell(r['restore_s'], 1000)} ms, priming a new chat "
                      f"with the same turn {_cell(r['prefill_s'], 1000)} ms."]
        for name, err in res["errors"].items():
            lines.append(f"- {name} failed: {err}")
        if res["skipped"]:
            lines.append(f"- not measured (llama-cpp-python not installed): {', '.join(res['skipped'])}")
        lines += [""] + goals(res) + [""]
    (out / "report.md").write_text("\n".join(lines))


def goals(res: dict) -> list[str]:
    rows, out = res["rows"], []
    for ours, peer in (("ours int8", "llama.cpp Q8_0"), ("ours int4", "llama.cpp Q4_0")):
        if ours in rows and peer in rows:
            a, b = rows[ours], rows[peer]
            for key, what in (("load_s", "load time"), ("rss_reply_mb", "RSS after the first reply")):
                x, y = a[key]["median"], b[key]["median"]
                out.append(f"- {ours} vs {peer}, {what}: {x:.3g} vs {y:.3g} ({x / y:.2f}×; goal ≤ 1: "
                           f"{'met' if x <= y else 'missed'})")
    return out


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(run["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 1.2 + 0.45 * len(ROWS) * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rows = run["models"][model]["rows"]
        names = list(rows)
        colors = ["tab:blue" if rows[n]["family"] == "ours" else "tab:orange" for n in names]
        for j, (key, label) in enumerate((("load_s", "load s"), ("rss_reply_mb", "RSS after the first reply, MB"))):
            ax = axes[i][j]
            ax.barh(names, [rows[n][key]["median"] for n in names], color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{model}: {label}", fontsize=9)
            ax.tick_params(labelsize=7)
            if j == 1:
                ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(out / "footprint.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from dialogpt_onnx.runtime.cli import OneLineParser, positive_int

    ap = OneLineParser(prog="python -m benchmarks.footprint", description=__doc__.split("\n\n")[0],
                       examples=("python -m benchmarks.footprint --out reports/footprint",
                                 "python -m benchmarks.footprint --quick --out /tmp/footprint"))
    ap.add_argument("--models", default="chat,small", help="chat (the bundled model) and/or small (random weights)")
    ap.add_argument("--runs", type=positive_int, default=5, help="fresh processes per row")
    ap.add_argument("--threads", type=positive_int, default=2, help="threads of every engine")
    ap.add_argument("--quick", action="store_true", help="the bundled model, 1 run, three rows")
    ap.add_argument("--out", default="benchmarks/results/footprint", help="report dir")
    a = ap.parse_args(argv)
    models = ["chat"] if a.quick else [m.strip() for m in a.models.split(",")]
    if bad := [m for m in models if m not in ("chat", "small")]:
        ap.error(f"--models takes chat and small, not {', '.join(bad)}")
    out = report_dir(ap, a.out)
    rows = [r for r in ROWS if not a.quick or r[0] in QUICK_ROWS]
    runs = 1 if a.quick else a.runs
    run = {"threads": a.threads, "runs": runs, "machine": machine_info(), "models": {}}
    for model in models:
        run["models"][model] = measure(model, out / "work" / model, runs, a.threads, rows)
    write_results(out, run, write_report, plot)
    failed = [f"{m}: {n}" for m, r in run["models"].items() for n in r["errors"]]
    if failed:
        print(f"error: rows failed: {'; '.join(failed)} (see report.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
