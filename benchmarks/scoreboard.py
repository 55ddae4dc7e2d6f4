"""Fidelity scoreboard: ours beside every installed peer, on the same held-out dialogue, in one run.

    python -m benchmarks.scoreboard [CHECKPOINT] [--engines a,b] [--small] [--quick] [--out DIR]

Every engine of benchmarks/engines.py (each in its own process) is compared with PyTorch fp32
(transformers) on held-out Topical-Chat (test_freq) with the bundled model (default CHECKPOINT):
- greedy replies: N new tokens per context, EOS banned for every engine; agreement = share of tokens
  before the first difference from fp32's reply, and the share of identical replies;
- teacher forcing over the real next turns: KL(P_fp32 || Q_engine) per reply token (mean, 99th
  percentile) and same top-1 — the figures of llama.cpp's `perplexity --kl-divergence` — and reply
  perplexity;
- decode ms/token (median of the greedy replies) and size on disk.
--small adds decode speed and size on DialoGPT-small-shaped random weights (the main suite's timing loop),
where the bundled model is too small to time fairly. Writes results.json, report.md and scoreboard.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dialogpt_onnx.runtime.cli import OneLineParser, positive_int
from dialogpt_onnx.runtime.scoring import log_softmax

from .__main__ import bench_model, spread
from .engines import Engine, dir_size
from .fidelity import prefix_agreement
from .machine import machine_info
from .outdir import report_dir
from .registry import all_engines
from .worker import Worker

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "chat-8x256"
REFERENCE = "pytorch-fp32"
ENGINES = ("pytorch-fp32,ours-fp32,llama.cpp-F32,ctranslate2-fp32,pytorch-int8,ours-int8,ctranslate2-int8,optimum-int8,"
           "llama.cpp-Q8_0,ours-int4,llama.cpp-Q4_0,llama.cpp-Q4_K_M")
QUICK_ENGINES = "pytorch-fp32,ours-fp32,ours-int8,ctranslate2-int8"
FULL = {"contexts": 100, "new_tokens": 32, "pairs": 100, "small_repeats": 5}
QUICK = {"contexts": 6, "new_tokens": 8, "pairs": 6, "small_repeats": 1}
# the goals of issue 18, by precision: greedy agreement, and mean KLD below this peer's
GOALS = {"ours-int8": (0.97, "llama.cpp-Q8_0"), "ours-int4": (0.90, "llama.cpp-Q4_K_M")}


def held_out(tok, eos: int, p: dict) -> tuple[list[list[int]], list[tuple[list[int], list[int]]]]:  # noqa: ANN001
    """(greedy contexts, teacher-forcing (context, reply) pairs), from disjoint Topical-Chat conversations."""
    from .quality import held_out as quality_held_out

    pairs, contexts, _ = quality_held_out(tok, eos, {"ppl_conversations": max(4, p["pairs"] // 5),
                                                     "contexts": p["contexts"], "chats": 1, "chat_turns": 1})
    step = max(1, len(pairs) // p["pairs"])
    return contexts, [(c, r[:p["new_tokens"]]) for c, r in pairs[::step][: p["pairs"]]]


def compare(ref: np.ndarray, got: np.ndarray, reply: list[int]) -> dict[str, np.ndarray]:
    """Per reply token: KL(ref || got), whether the top-1 tokens agree, and -log q(reply token)."""
    vocab = min(ref.shape[-1], got.shape[-1])  # a converter may pad the vocabulary; the padding is not a token
    lp, lq = log_softmax(ref[:, :vocab]), log_softmax(got[:, :vocab])
    return {"kld": np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0),
            "same_top1": lp.argmax(-1) == lq.argmax(-1),
            "nll": -lq[np.arange(len(reply)), reply]}


def start(engines: list[Engine], src: Path, work: Path, threads: int) -> tuple[dict, dict, dict]:
    """(workers, artifacts, failures) for the engines that convert and load."""
    workers, artifacts, failed = {}, {}, {}
    for e in tqdm(engines, desc="convert + load", unit="engine"):
        try:
            art = e.prepare(src, work, threads)
            w = Worker(e, art, threads)
        except Exception as ex:  # noqa: BLE001 - one engine failing must not stop the board
            failed[e.name] = f"failed to prepare ({type(ex).__name__}: {str(ex)[:200]})"
            continue
        if "error" in w.hello:
            failed[e.name] = f"failed to load ({w.hello['error'][:200]})"
            continue
        workers[e.name], artifacts[e.name] = w, art
    for name, why in failed.items():
        print(f"  {name}: {why}; skipped", file=sys.stderr)
    return workers, artifacts, failed


def measure(src: Path, engines: list[Engine], work: Path, p: dict, threads: int) -> tuple[dict, dict]:
    """(results by engine, failures by engine)"""
    from dialogpt_onnx.corpora import tokenizer_files
    from dialogpt_onnx.export.tokenizer import build_tokenizer
    from dialogpt_onnx.runtime.text import EOS_TOKEN_ID

    tok = build_tokenizer(tokenizer_files())  # GPT-2's BPE: every engine's checkpoint uses it
    contexts, pairs = held_out(tok, EOS_TOKEN_ID, p)
    workers, artifacts, failed = start(engines, src, work, threads)
    if REFERENCE not in workers:
        raise RuntimeError(f"the reference {REFERENCE} could not run: {failed.get(REFERENCE, 'not installed')}")
    n = p["new_tokens"]
    replies: dict[str, list[list[int]]] = {name: [] for name in workers}
    decode: dict[str, list[float]] = {name: [] for name in workers}
    for i, ctx in enumerate(tqdm(contexts, desc="greedy replies", unit="context")):
        order = list(workers)[i % len(workers):] + list(workers)[:i % len(workers)]  # drift hits all alike
        for name in order:
            res = workers[name].call(ctx, n)
            if "error" in res:
                raise RuntimeError(f"{name}: {res['error']}\n{res.get('trace', '')}")
            replies[name].append(res["ids"])
            decode[name].append(res["decode_s"] / (n - 1) * 1e3)
    per_token: dict[str, dict[str, list]] = {name: {"kld": [], "same_top1": [], "nll": []} for name in workers}
    for ctx, reply in tqdm(pairs, desc="teacher forcing", unit="reply"):
        ref = workers[REFERENCE].logits(ctx, reply)["logits"]
        for name, w in workers.items():
            res = w.logits(ctx, reply)
            if "error" in res:
                raise RuntimeError(f"{name}: {res['error']}\n{res.get('trace', '')}")
            for k, v in compare(ref, res["logits"], reply).items():
                per_token[name][k].append(v)
    results = {}
    for name, w in workers.items():
        kld = np.concatenate(per_token[name]["kld"])
        results[name] = {
            "token_agreement": statistics.mean(prefix_agreement(a, b) for a, b in
                                               zip(replies[name], replies[REFERENCE], strict=True)),
            "identical_replies": statistics.mean(a == b for a, b in zip(replies[name], replies[REFERENCE],
                                                                         strict=True)),
            "mean_kld": float(kld.mean()), "p99_kld": float(np.percentile(kld, 99)), "max_kld": float(kld.max()),
            "same_top1": float(np.concatenate(per_token[name]["same_top1"]).mean()),
            "reply_perplexity": math.exp(float(np.concatenate(per_token[name]["nll"]).mean())),
            "decode_ms_per_token": spread(decode[name]), "size_mb": dir_size(artifacts[name]) / 1e6,
            "scored_tokens": int(kld.size), "peak_rss_mb": w.stop()}
    return results, failed


def small_speed(engines: list[Engine], out: Path, p: dict, threads: int) -> dict:
    """Decode speed and size on DialoGPT-small-shaped random weights: the main suite's timing loop."""
    from .random_checkpoint import make_random_checkpoint

    src = out / "checkpoints" / "small"
    if not (src / "config.json").is_file():
        make_random_checkpoint("small", src)
    a = argparse.Namespace(threads=threads, repeats=p["small_repeats"], warmup=1, new_tokens=64, histories=[64],
                           agreement_prompts=1)
    return bench_model("small", src, engines, out / "work" / "small", a)


def goal_lines(res: dict) -> list[str]:
    lines = []
    for name, (agreement, peer) in GOALS.items():
        r, q = res.get(name), res.get(peer)
        if r is None:
            continue
        lines.append(f"- {name} greedy agreement {r['token_agreement']:.3f} (goal ≥ {agreement}): "
                     + ("met" if r["token_agreement"] >= agreement else "**missed**"))
        if q is not None:
            lines.append(f"- {name} mean KLD {r['mean_kld']:.5f} vs {peer} {q['mean_kld']:.5f} (goal: below): "
                         + ("met" if r["mean_kld"] < q["mean_kld"] else "**missed**"))
    return lines


def write_report(run: dict, out: Path) -> None:
    res, m, p = run["results"], run["machine"], run["params"]
    head = ["engine", "greedy agreement", "identical replies", "mean KLD", "99% KLD", "same top-1",
            "reply ppl", "decode ms/token (bundled)", "size MB"]
    small = (run.get("small") or {}).get("engines", {})
    if small:
        head += ["decode ms/token (small)", "size MB (small)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in res.items():
        d = r["decode_ms_per_token"]
        cells = [name, f"{r['token_agreement']:.3f}", f"{r['identical_replies']:.2f}", f"{r['mean_kld']:.5f}",
                 f"{r['p99_kld']:.4f}", f"{r['same_top1']:.3f}", f"{r['reply_perplexity']:.2f}",
                 f"{d['median']:.2f} ({d['min']:.2f}–{d['max']:.2f})", f"{r['size_mb']:.1f}"]
        if small:
            s = small.get(name)
            sd = (s or {}).get("decode_ms_per_token") or {}
            cells += [f"{sd['median']:.2f} ({sd['min']:.2f}–{sd['max']:.2f})" if sd else "", f"{s['size_mb']:.1f}"
                      if s else ""]
        rows.append("| " + " | ".join(cells) + " |")
    text = [f"# Fidelity scoreboard: {Path(run['checkpoint']).name}", "",
            f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · "
            f"{run['threads']} threads" + (" · **quick run**" if run["quick"] else ""), "",
            f"Reference: {REFERENCE} (transformers). Greedy: {p['new_tokens']} new tokens (EOS banned) on "
            f"{p['contexts']} held-out Topical-Chat contexts; agreement = share of tokens before the first "
            f"difference. Teacher forcing: {next(iter(res.values()))['scored_tokens']} tokens of "
            f"{p['pairs']} real replies; KLD = KL(P_fp32 ‖ Q) per token in nats, as llama.cpp's "
            "`perplexity --kl-divergence`. Decode: median (range) over the greedy replies"
            + (f"; small: DialoGPT-small-shaped random weights, 64 tokens after a 64-token history, median of "
               f"{p['small_repeats']}" if small else "") + ".", "", *rows, "",
            "## Goals", "", *goal_lines(res), ""]
    if run["failed"]:
        text += ["## Not measured", "", *(f"- {k}: {v}" for k, v in run["failed"].items()), ""]
    text += ["![agreement and KLD by engine](scoreboard.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = {k: v for k, v in run["results"].items() if k != REFERENCE}
    names = list(res)
    colors = ["tab:blue" if n.startswith("ours") else "tab:gray" for n in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    a1.barh(names, [res[n]["token_agreement"] for n in names], color=colors)
    a1.set_xlabel("greedy agreement with PyTorch fp32 (higher is better)")
    a1.set_xlim(0, 1)
    a2.barh(names, [max(res[n]["mean_kld"], 1e-7) for n in names], color=colors)
    a2.set_xscale("log")
    a2.set_xlabel("mean KL divergence from PyTorch fp32, nats (lower is better)")
    a1.invert_yaxis()
    for ax in (a1, a2):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{Path(run['checkpoint']).name}: ours (blue) and peers, {run['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scoreboard.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m benchmarks.scoreboard", description=__doc__.split("\n\n")[0], examples=(
        "python -m benchmarks.scoreboard --quick --out /tmp/board",
        "python -m benchmarks.scoreboard --small --out benchmarks/results/scoreboard"))
    ap.add_argument("checkpoint", nargs="?", default=str(BUNDLED), help="a trained checkpoint dir")
    ap.add_argument("--out", default="benchmarks/results/scoreboard", help="dir for results.json, report.md, plot")
    ap.add_argument("--engines", help=f"comma list (default: every installed one of {ENGINES})")
    ap.add_argument("--small", action="store_true", help="also decode speed and size on DialoGPT-small random weights")
    ap.add_argument("--quick", action="store_true", help=f"a few contexts and {QUICK_ENGINES}: every code path")
    ap.add_argument("--threads", type=positive_int, default=2)
    a = ap.parse_args(argv)
    known = {e.name: e for e in all_engines()}
    wanted = (a.engines or (QUICK_ENGINES if a.quick else ENGINES)).split(",")
    unknown = [w for w in wanted if w not in known]
    if unknown:
        ap.error(f"unknown engines {', '.join(unknown)}: choose from {', '.join(known)}")
    if REFERENCE not in wanted:
        wanted.insert(0, REFERENCE)
    if not (Path(a.checkpoint) / "config.json").is_file():
        ap.error(f"{a.checkpoint} is not a checkpoint dir (no config.json): give a trained checkpoint")
    out = report_dir(ap, a.out)
    engines = []
    for name in wanted:
        missing = known[name].missing()
        if missing:
            print(f"skipping {name}: {', '.join(missing)} not installed")
        else:
            engines.append(known[name])
    p = dict(QUICK if a.quick else FULL)
    results, failed = measure(Path(a.checkpoint), engines, out / "work" / "bundled", p, a.threads)
    run = {"checkpoint": str(a.checkpoint), "quick": a.quick, "threads": a.threads, "params": p,
           "machine": machine_info(), "results": results,
           "failed": {**failed, **{e.name: "not installed" for e in map(known.get, wanted) if e and e.missing()}}}
    if a.small:
        run["small"] = small_speed([e for e in engines if e.name in results], out, p, a.threads)
    (out / "results.json").write_text(json.dumps(run, indent=1))
    write_report(run, out)
    plot(run, out)
    print(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
