"""What MMI reranking buys: reply diversity, length and overlap with the human reply, and its latency.

    python -m benchmarks.studies.mmi MODEL_DIR --backward BACKWARD_DIR [--candidates 4,8,16] [--quick] [--out DIR]

Held-out Topical-Chat (test_freq) contexts (the last 128 tokens of the earlier turns) are answered by
greedy decoding, top-k sampling (k 50) and MMI reranking of N top-k candidates per N; each system's
replies get distinct-1/2 (distinct word n-grams / all, over the whole set, as the DialoGPT paper),
mean length in words, BLEU-2 against the human replies (sacrebleu) and the median ms per reply.
Writes results.json, report.md and mmi.png.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..fidelity import distinct
from ..machine import machine_info
from ..outdir import report_dir, write_results

FULL = {"contexts": 200, "max_new_tokens": 40}
QUICK = {"contexts": 6, "max_new_tokens": 12}


def held_out(model, n: int) -> tuple[list[list[int]], list[str]]:
    """(contexts, human replies), spread over Topical-Chat test_freq."""
    from dialogpt_onnx.corpora import topical_chat
    from dialogpt_onnx.training.evaluate import reply_pairs

    convs = topical_chat("test_freq")
    pairs = reply_pairs(model.tokenizer, convs, model.eos)
    step = max(1, len(pairs) // n)
    picked = pairs[::step][:n]
    return [c for c, _ in picked], [model.decode(r) for _, r in picked]


def run_system(replier, contexts: list[list[int]], seeded: bool, **kw) -> tuple[list[str], list[float]]:
    """`replier`: a DialogModel or an MMIReranker (both generate one reply per prompt)."""
    texts, ms = [], []
    for i, c in enumerate(contexts):
        extra = {"seed": i} if seeded else {}
        t = time.perf_counter()
        texts.append(replier.generate(c, **kw, **extra).text)
        ms.append((time.perf_counter() - t) * 1e3)
    return texts, ms


def metrics(texts: list[str], refs: list[str], ms: list[float]) -> dict:
    import sacrebleu

    words = [t.lower().split() for t in texts]
    bleu = sacrebleu.metrics.BLEU(max_ngram_order=2, effective_order=True)
    return {"distinct_1": distinct(words, 1), "distinct_2": distinct(words, 2),
            "mean_words": statistics.mean(len(w) for w in words),
            "bleu_2": bleu.corpus_score(texts, [refs]).score,
            "ms_per_reply": {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}}


def write_report(run: dict, out: Path) -> None:
    m = run["machine"]
    rows = ["| system | distinct-1 | distinct-2 | mean words | BLEU-2 | ms per reply (median) |",
            "|---|---|---|---|---|---|"]
    for name, r in run["systems"].items():
        rows.append(f"| {name} | {r['distinct_1']:.3f} | {r['distinct_2']:.3f} | {r['mean_words']:.1f} | "
                    f"{r['bleu_2']:.2f} | {r['ms_per_reply']['median']:.0f} |")
    text = [f"# MMI reranking: {run['model']} (backward: {run['backward']})", "",
            f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · {run['threads']} threads"
            + (" · **quick run**" if run["quick"] else ""), "",
            f"{run['params']['contexts']} held-out Topical-Chat test_freq contexts, up to "
            f"{run['params']['max_new_tokens']} new tokens; sampling seeded per context.", "", *rows, "",
            "![diversity and latency per system](mmi.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(run["systems"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(names, [run["systems"][n]["distinct_2"] for n in names], color="tab:blue")
    a.set_title("distinct-2 (higher: less repetitive)")
    b.bar(names, [run["systems"][n]["ms_per_reply"]["median"] for n in names], color="tab:orange")
    b.set_title("ms per reply (median)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "mmi.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from dialogpt_onnx.runtime.cli import OneLineParser

    ap = OneLineParser(prog="python -m benchmarks.studies.mmi", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="exported forward model")
    ap.add_argument("--backward", required=True, help="exported backward model (dialogpt-onnx train --reverse)")
    ap.add_argument("--candidates", default="4,8,16", help="N values for MMI, comma-separated")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/mmi")
    a = ap.parse_args(argv)
    try:
        ns = [int(x) for x in a.candidates.split(",")]
        assert ns and min(ns) >= 1
    except (ValueError, AssertionError):
        print(f"error: --candidates {a.candidates!r}: give comma-separated integers >= 1, e.g. 4,8,16",
              file=sys.stderr)
        return 2
    from dialogpt_onnx import runtime
    from dialogpt_onnx.runtime.mmi import MMIOptions, MMIReranker

    try:
        model, backward = runtime.load(a.model_dir, threads=a.threads), runtime.load(a.backward, threads=a.threads)
        MMIReranker(model, backward)  # the pair fits: one line now, not a trace later
    except runtime.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = QUICK if a.quick else FULL
    contexts, refs = held_out(model, p["contexts"])
    systems = {"greedy": (model, {}), "top-k 50": (model, {"do_sample": True, "top_k": 50}),
               **{f"MMI N={n}": (MMIReranker(model, backward, MMIOptions(candidates=n)), {"top_k": 50}) for n in ns}}
    results = {}
    for name, (replier, kw) in tqdm(systems.items(), desc="systems", unit="system"):
        seeded = replier is not model or kw.get("do_sample", False)
        texts, ms = run_system(replier, contexts, seeded, max_new_tokens=p["max_new_tokens"], **kw)
        results[name] = {**metrics(texts, refs, ms), "samples": texts[:5]}
    out = report_dir(ap, a.out)
    run = {"model": a.model_dir, "backward": a.backward, "quick": a.quick, "threads": a.threads, "params": p,
           "machine": machine_info(), "human_samples": refs[:5], "systems": results}
    write_results(out, run, write_report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
