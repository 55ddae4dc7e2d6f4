"""How the chat defaults were chosen: decoding settings compared on held-out dialogue.

    python -m benchmarks.studies.defaults [MODEL_DIR] [--quick] [--out DIR]

MODEL_DIR (default: the bundled model, exported to int8 under --out) answers held-out Topical-Chat
(test_freq) contexts (the last 128 tokens of the earlier turns) with each candidate setting, sampled ones
seeded per context. Per setting: the share of replies that loop (a word 3-gram said twice), distinct-1/2
(distinct word n-grams / all, over the whole set), mean length in words, BLEU-2 against the human replies
and the median ms per reply. The rule: a setting qualifies when at most 2% of its replies loop and its
distinct-2 and BLEU-2 are at least top-k 50's; the qualifying setting with the best BLEU-2 is the
default; when none qualifies, the closest (see choose). runtime.sampling.CHAT_DEFAULTS holds the choice.
Writes results.json, report.md and defaults.png.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from ..machine import machine_info
from ..outdir import report_dir, write_results
from .mmi import held_out, metrics, run_system

FULL = {"contexts": 200, "max_new_tokens": 64}
QUICK = {"contexts": 8, "max_new_tokens": 16}
MAX_LOOPING = 0.02
REFERENCE = "top-k 50"

# every option a candidate may set, at its neutral value: a candidate names what it changes, whatever the
# runtime's defaults are
PLAIN = {"do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
         "no_repeat_ngram_size": 0}
CANDIDATES: dict[str, dict] = {
    "greedy": {},
    "greedy, repetition 1.2": {"repetition_penalty": 1.2},
    "greedy, no-repeat 3": {"no_repeat_ngram_size": 3},
    "greedy, repetition 1.2, no-repeat 3": {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
    "top-k 50": {"do_sample": True, "top_k": 50},
    "top-k 50, repetition 1.2": {"do_sample": True, "top_k": 50, "repetition_penalty": 1.2},
    "top-k 50, no-repeat 3": {"do_sample": True, "top_k": 50, "no_repeat_ngram_size": 3},
    "top-k 50, repetition 1.1": {"do_sample": True, "top_k": 50, "repetition_penalty": 1.1},
    "top-k 50, repetition 1.1, no-repeat 3": {"do_sample": True, "top_k": 50, "repetition_penalty": 1.1,
                                              "no_repeat_ngram_size": 3},
    "top-k 50, T 0.9, no-repeat 3": {"do_sample": True, "top_k": 50, "temperature": 0.9, "no_repeat_ngram_size": 3},
    "top-k 40, T 0.8, no-repeat 3": {"do_sample": True, "top_k": 40, "temperature": 0.8, "no_repeat_ngram_size": 3},
    "top-p 0.9, T 0.8": {"do_sample": True, "top_p": 0.9, "temperature": 0.8},
    "top-p 0.9, T 0.8, repetition 1.2": {"do_sample": True, "top_p": 0.9, "temperature": 0.8,
                                         "repetition_penalty": 1.2},
    "top-p 0.9, T 0.7, no-repeat 3": {"do_sample": True, "top_p": 0.9, "temperature": 0.7,
                                      "no_repeat_ngram_size": 3},
    "top-k 40, T 0.7, repetition 1.2, no-repeat 3": {"do_sample": True, "top_k": 40, "temperature": 0.7,
                                                     "repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
    "top-k 50, T 0.8, repetition 1.2, no-repeat 3": {"do_sample": True, "top_k": 50, "temperature": 0.8,
                                                     "repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
}


def loops(text: str) -> bool:
    """A reply loops when it says some word 3-gram twice ("I don't know that I don't know that")."""
    w = text.lower().split()
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return len(grams) != len(set(grams))


def choose(results: dict[str, dict]) -> tuple[str, dict[str, bool], bool]:
    """The default by the rule in the module's docstring: (its name, which settings qualified, whether the
    chosen one qualified). When none does, the closest among those that loop at most MAX_LOOPING: the best
    worse-of-two ratio to the reference's distinct-2 and BLEU-2."""
    ref = results[REFERENCE]
    ok = {name: r["looping"] <= MAX_LOOPING and r["distinct_2"] >= ref["distinct_2"] and r["bleu_2"] >= ref["bleu_2"]
          for name, r in results.items()}
    passing = [n for n, q in ok.items() if q]
    if passing:
        return max(passing, key=lambda n: results[n]["bleu_2"]), ok, True
    calm = [n for n, r in results.items() if r["looping"] <= MAX_LOOPING] or list(results)
    return max(calm, key=lambda n: min(results[n]["distinct_2"] / ref["distinct_2"],
                                       results[n]["bleu_2"] / ref["bleu_2"])), ok, False


def write_report(run: dict, out: Path) -> None:
    m = run["machine"]
    rows = ["| setting | looping replies | distinct-1 | distinct-2 | mean words | BLEU-2 | ms per reply | qualifies |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in run["settings"].items():
        mark = ("**chosen**, " if name == run["chosen"] else "") + ("yes" if run["qualifies"][name] else "no")
        rows.append(f"| {name} | {100 * r['looping']:.1f}% | {r['distinct_1']:.3f} | {r['distinct_2']:.3f} | "
                    f"{r['mean_words']:.1f} | {r['bleu_2']:.2f} | {r['ms_per_reply']['median']:.0f} | {mark} |")
    text = [f"# Chat defaults ({'quick' if run['quick'] else 'full'} run)", "",
            f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · {run['model']}", "",
            f"{run['params']['contexts']} held-out Topical-Chat contexts, replies of up to "
            f"{run['params']['max_new_tokens']} tokens. A setting qualifies with at most {100 * MAX_LOOPING:.0f}% "
            f"looping replies and distinct-2 and BLEU-2 at least {REFERENCE}'s; the best BLEU-2 among them is "
            "chosen.", "", *rows, "",
            f"Chosen: {run['chosen']}" + ("." if run["goal_met"] else (
                ": no setting meets the goal, this is the closest (among those looping at most "
                f"{100 * MAX_LOOPING:.0f}%, the best worse-of-two ratio to {REFERENCE}'s distinct-2 and BLEU-2).")),
            "", "![looping share and distinct-2](defaults.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(run["settings"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    a.barh(names, [100 * run["settings"][n]["looping"] for n in names], color="tab:red")
    a.axvline(100 * MAX_LOOPING, color="k", linestyle="--")
    a.set_title("looping replies (%)")
    b.scatter([run["settings"][n]["distinct_2"] for n in names], [run["settings"][n]["bleu_2"] for n in names])
    for n in names:
        b.annotate(n, (run["settings"][n]["distinct_2"], run["settings"][n]["bleu_2"]), fontsize=6)
    b.set(title="distinct-2 vs BLEU-2", xlabel="distinct-2", ylabel="BLEU-2")
    fig.tight_layout()
    fig.savefig(out / "defaults.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from dialogpt_onnx.runtime.cli import OneLineParser

    ap = OneLineParser(prog="python -m benchmarks.studies.defaults", description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", nargs="?", default=None, help="exported model (default: the bundled one, int8)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/defaults")
    a = ap.parse_args(argv)
    from dialogpt_onnx import runtime

    out = report_dir(ap, a.out)
    model_dir = Path(a.model_dir) if a.model_dir else None
    if model_dir is None:
        from dialogpt_onnx.export import ExportOptions, export_model

        from ..quality import BUNDLED

        model_dir = out / "work" / "bundled-int8"
        if not (model_dir / "manifest.json").is_file():
            export_model(str(BUNDLED), model_dir, ExportOptions(variant="int8", overwrite=True, progress=False,
                                                                n_prompts=1, parity_tokens=8, threads=a.threads))
    try:
        model = runtime.load(model_dir, threads=a.threads)
    except runtime.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = QUICK if a.quick else FULL
    contexts, refs = held_out(model, p["contexts"])
    results = {}
    for name, kw in tqdm(CANDIDATES.items(), desc="settings", unit="setting"):
        texts, ms = run_system(model, contexts, kw.get("do_sample", False), max_new_tokens=p["max_new_tokens"],
                               **{**PLAIN, **kw})
        results[name] = {**metrics(texts, refs, ms), "looping": statistics.mean(map(loops, texts)),
                         "options": kw, "samples": texts[:5]}
    chosen, qualifies, met = choose(results)
    run = {"model": str(model_dir), "quick": a.quick, "threads": a.threads, "params": p, "machine": machine_info(),
           "human_samples": refs[:5], "settings": results, "chosen": chosen, "qualifies": qualifies, "goal_met": met}
    write_results(out, run, write_report, plot,
                  f" (chosen: {chosen}{'' if met else ', the closest: none meets the goal'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
