"""Fidelity report: what each exported variant keeps of the fp32 model's replies, and what it costs.

    python -m benchmarks.quality [CHECKPOINT] [--quick] [--candidates] [--variants a,b] [--out DIR]

CHECKPOINT (default: the bundled model) is exported once per variant; every variant is then measured
on held-out Topical-Chat (test_freq) dialogue against PyTorch fp32 (transformers): reply perplexity,
greedy agreement, batch and cache invariance, distinct-1/2 and reply length under greedy / top-k /
top-p, decode speed and size. Writes results.json, report.md and quality.png to --out.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from dialogpt_onnx.export.quantize import QuantConfig
from dialogpt_onnx.runtime.cli import OneLineParser

from . import fidelity
from .machine import machine_info
from .outdir import report_dir

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "chat-8x256"
REFERENCE = "pytorch-fp32"

# name -> (export variant, quantization; None = the exporter's default for that variant)
VARIANTS: dict[str, tuple[str, QuantConfig | None]] = {
    "onnx-fp32": ("fp32", None),
    "int8": ("int8", None),
    "int4": ("int4", None),
}
# alternatives measured by --candidates (the defaults above were chosen among them)
CANDIDATES: dict[str, tuple[str, QuantConfig]] = {
    "int8-dynamic": ("int8", QuantConfig("int8", "dynamic", head_bits=8, head_block_size=128)),
    "int8-rowwise": ("int8", QuantConfig("int8", "rowwise", head_bits=8, head_block_size=128)),
    "int8-rowwise-7bit": ("int8", QuantConfig("int8", "rowwise", reduce_range=True, head_bits=8,
                                              head_block_size=128)),
    "int8-rowwise-7bit-residual": ("int8", QuantConfig("int8", "rowwise", reduce_range=True, head_bits=8,
                                                       head_block_size=128, residual_layers=("mlp/",),
                                                       head_residual=True)),
    "int8-nbits8-b128": ("int8", QuantConfig("int8", "nbits", block_size=128, head_bits=8, head_block_size=128)),
    "int8-nbits8-b256": ("int8", QuantConfig("int8", "nbits", block_size=256, head_bits=8, head_block_size=128)),
    "int8-nbits8-b32-head32": ("int8", QuantConfig("int8", "nbits", block_size=32, head_bits=8, head_block_size=32)),
    "int4-b128-head4": ("int4", QuantConfig("int4", "nbits", block_size=128, head_bits=4, head_block_size=128)),
    "int4-b128-head8": ("int4", QuantConfig("int4", "nbits", block_size=128, head_bits=8, head_block_size=128)),
    "int4-b64-head8": ("int4", QuantConfig("int4", "nbits", block_size=64, head_bits=8, head_block_size=128)),
    "int4-b32-head8": ("int4", QuantConfig("int4", "nbits", block_size=32, head_bits=8, head_block_size=128)),
    "int4-b32-head8-b32": ("int4", QuantConfig("int4", "nbits", block_size=32, head_bits=8, head_block_size=32)),
    "int4-b64-head8-b32": ("int4", QuantConfig("int4", "nbits", block_size=64, head_bits=8, head_block_size=32)),
    "int4-hqq-b128-head8": ("int4", QuantConfig("int4", "nbits", block_size=128, head_bits=8, head_block_size=128,
                                                algorithm="hqq")),
    "int4-hqq-b64-head8": ("int4", QuantConfig("int4", "nbits", block_size=64, head_bits=8, head_block_size=128,
                                               algorithm="hqq")),
}

FULL = {"contexts": 200, "new_tokens": 32, "ppl_conversations": 50, "chats": 20, "chat_turns": 6,
        "diversity_contexts": 100, "speed_repeats": 5, "speed_tokens": 64}
QUICK = {"contexts": 16, "new_tokens": 16, "ppl_conversations": 4, "chats": 2, "chat_turns": 3,
         "diversity_contexts": 8, "speed_repeats": 2, "speed_tokens": 16}
TARGETS = {"int8": {"token_agreement": 0.97, "ppl_increase": 0.01},
           "int4": {"token_agreement": 0.90, "ppl_increase": 0.02}}


def export_variants(checkpoint: str, names: list[str], out: Path, threads: int) -> dict[str, Path]:
    from dialogpt_onnx.export import ExportOptions, export_model

    dirs = {}
    for name in tqdm(names, desc="export", unit="variant"):
        variant, quant = {**VARIANTS, **CANDIDATES}[name]
        d = out / "models" / name
        export_model(checkpoint, d, ExportOptions(variant=variant, quant=quant, overwrite=True, progress=False,
                                                  n_prompts=1, parity_tokens=8, threads=threads))
        dirs[name] = d
    return dirs


def held_out(tok, eos: int, p: dict) -> tuple[list[tuple[list[int], list[int]]], list[list[int]], list[list[str]]]:
    """(perplexity pairs, greedy contexts, chats' user turns) from Topical-Chat test_freq."""
    from dialogpt_onnx.corpora import topical_chat
    from dialogpt_onnx.training.evaluate import reply_pairs

    convs = topical_chat("test_freq")
    pairs = reply_pairs(tok, convs[: p["ppl_conversations"]], eos)
    ctx_pool = reply_pairs(tok, convs[p["ppl_conversations"]:], eos)  # disjoint from the perplexity set
    step = max(1, len(ctx_pool) // p["contexts"])
    contexts = [c for c, _ in ctx_pool[::step][: p["contexts"]]]
    chats = [conv[0::2][: p["chat_turns"]] for conv in convs[-p["chats"]:]]
    return pairs, contexts, chats


def speed(models: dict, prompt: list[int], tokens: int, repeats: int) -> dict[str, dict]:
    """Decode ms/token and first-token ms, variants interleaved within each repeat (first round warms up)."""
    from dialogpt_onnx.runtime.generate import generate_ids

    runs: dict[str, dict[str, list[float]]] = {n: {"decode": [], "first": []} for n in models}
    for r in range(repeats + 1):
        for name, m in models.items():
            stamps, t0 = [], time.perf_counter()
            for _ in generate_ids(m.graph.new_cache(), [prompt], m.options(max_new_tokens=tokens), m.eos,
                                  stop_at_eos=False):
                stamps.append(time.perf_counter())
            if r:
                runs[name]["first"].append((stamps[0] - t0) * 1e3)
                runs[name]["decode"].append((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3)
    return {n: {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
                for k, v in d.items()} for n, d in runs.items()}


def measure(checkpoint: str, names: list[str], out: Path, p: dict, threads: int) -> tuple[dict, int]:
    """(results per variant, number of perplexity replies)"""
    from dialogpt_onnx import runtime
    from dialogpt_onnx.export.checkpoint import load_checkpoint, torch_model
    from dialogpt_onnx.training.evaluate import reply_perplexity as torch_perplexity

    dirs = export_variants(checkpoint, names, out, threads)
    models = {n: runtime.load(d, threads=threads) for n, d in dirs.items()}
    first = next(iter(models.values()))
    pairs, contexts, chats = held_out(first.tokenizer, first.eos, p)
    ref = torch_model(load_checkpoint(checkpoint))
    n = p["new_tokens"]
    reference = fidelity.torch_greedy_replies(ref, contexts, n, first.eos)
    results: dict[str, dict] = {REFERENCE: {"reply_perplexity": torch_perplexity(ref, pairs)}}
    del ref
    for name, m in tqdm(models.items(), desc="measure", unit="variant"):
        alone = fidelity.greedy_replies(m, contexts, n)
        batched = fidelity.greedy_replies(m, contexts, n, batch=8)
        results[name] = {
            "reply_perplexity": fidelity.reply_perplexity(m, pairs),
            **fidelity.agreement(alone, reference),
            "batch_invariance": fidelity.agreement(batched, alone)["identical_replies"],
            "cache_invariance": fidelity.cache_invariance(m, chats),
            "diversity": fidelity.diversity(m, contexts[: p["diversity_contexts"]]),
            "size_mb": sum(f.stat().st_size for f in dirs[name].iterdir()) / 1e6,
            "quantization": m.manifest.raw.get("quantization"),
        }
    prompt = [t for c in contexts for t in c][:64]
    for name, s in speed(models, prompt, p["speed_tokens"], p["speed_repeats"]).items():
        results[name]["decode_ms_per_token"], results[name]["first_token_ms"] = s["decode"], s["first"]
    base = results[REFERENCE]["reply_perplexity"]
    for r in results.values():
        r["ppl_increase"] = r["reply_perplexity"] / base - 1
    return results, len(pairs)


def target_lines(results: dict) -> list[str]:
    lines = []
    for name, t in TARGETS.items():
        r = results.get(name)
        if not r:
            continue
        checks = [("token agreement", r["token_agreement"] >= t["token_agreement"],
                   f"{r['token_agreement']:.3f} (≥ {t['token_agreement']})"),
                  ("perplexity", r["ppl_increase"] <= t["ppl_increase"],
                   f"{r['ppl_increase']:+.2%} vs PyTorch fp32 (≤ +{t['ppl_increase']:.0%})")]
        if name == "int8":
            checks += [("batch invariance", r["batch_invariance"] == 1.0, f"{r['batch_invariance']:.3f}"),
                       ("cache invariance", r["cache_invariance"]["chats_equal"] == 1.0,
                        f"{r['cache_invariance']['chats_equal']:.3f} of chats")]
        if name == "int4" and "int8" in results:
            a, b = r["decode_ms_per_token"]["median"], results["int8"]["decode_ms_per_token"]["median"]
            checks.append(("decode faster than int8", a < b, f"{a:.2f} vs {b:.2f} ms/token"))
        lines += [f"- {name} {what}: {value} — {'met' if ok else '**missed**'}" for what, ok, value in checks]
    return lines


def write_report(run: dict, out: Path) -> None:
    res = run["results"]
    head = ["variant", "size MB", "decode ms/token", "first token ms", "reply ppl (Δ)", "token agreement",
            "identical replies", "batch inv.", "cache inv. (turns / chats)", "distinct-2 greedy / top-k / top-p",
            "mean length greedy"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in res.items():
        if name == REFERENCE:
            rows.append(f"| {name} | | | | {r['reply_perplexity']:.2f} | 1 (reference) | | | | | |")
            continue
        d, f, div, c = r["decode_ms_per_token"], r["first_token_ms"], r["diversity"], r["cache_invariance"]
        rows.append(" | ".join([
            f"| {name}", f"{r['size_mb']:.1f}", f"{d['median']:.2f} ({d['min']:.2f}–{d['max']:.2f})",
            f"{f['median']:.1f}", f"{r['reply_perplexity']:.2f} ({r['ppl_increase']:+.2%})",
            f"{r['token_agreement']:.3f}", f"{r['identical_replies']:.3f}", f"{r['batch_invariance']:.3f}",
            f"{c['turns_equal']:.3f} / {c['chats_equal']:.3f}",
            " / ".join(f"{div[k]['distinct_2']:.3f}" for k in ("greedy", "top_k", "top_p")),
            f"{div['greedy']['mean_length']:.1f} |"]))
    m, p = run["machine"], run["params"]
    text = [f"# Fidelity report: {run['checkpoint']}", "",
            f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · "
            f"onnxruntime {m['versions'].get('onnxruntime')} · {run['threads']} threads"
            + (" · **quick run**" if run["quick"] else ""), "",
            f"Held-out Topical-Chat test_freq. Reply perplexity over {run['ppl_pairs']} replies (context: the "
            "last 128 tokens of earlier turns); greedy agreement with PyTorch fp32 over "
            f"{p['new_tokens']} new tokens (EOS banned) on {p['contexts']} contexts; batch invariance: ragged "
            f"batches of 8 vs alone; cache invariance: {p['chats']} chats of {p['chat_turns']} turns, cache kept "
            f"vs recomputed; decode after a 64-token history, median of {p['speed_repeats']}.", "",
            *rows, "", "## Targets", "", *target_lines(res), "", "![agreement vs speed vs size](quality.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in run["results"].items():
        if name == REFERENCE:
            continue
        x, y = r["decode_ms_per_token"]["median"], r["token_agreement"]
        ax.scatter(x, y, s=max(r["size_mb"], 1) * 2, alpha=0.6)
        ax.annotate(f"{name}\n{r['size_mb']:.0f} MB", (x, y), fontsize=8, xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("decode ms/token (median)")
    ax.set_ylabel("greedy token agreement with PyTorch fp32")
    ax.set_title(f"{Path(run['checkpoint']).name}: agreement vs speed (marker area ∝ size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(BUNDLED), help="checkpoint dir (default: bundled model)")
    ap.add_argument("--out", default="benchmarks/results/quality", help="dir for results.json, report.md, plot")
    ap.add_argument("--quick", action="store_true", help="a few contexts, for CI: every code path, rough figures")
    ap.add_argument("--candidates", action="store_true", help="also the alternative quantizations")
    ap.add_argument("--variants", help=f"comma-separated, from: {', '.join([*VARIANTS, *CANDIDATES])}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=N",
                    help=f"override a measurement size: {', '.join(FULL)} (e.g. contexts=100)")
    args = ap.parse_args(argv)
    names = args.variants.split(",") if args.variants else [*VARIANTS, *(CANDIDATES if args.candidates else [])]
    unknown = [n for n in names if n not in VARIANTS and n not in CANDIDATES]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}: choose from {', '.join([*VARIANTS, *CANDIDATES])}",
              file=sys.stderr)
        return 2
    if not Path(args.checkpoint).is_dir():
        print(f"error: checkpoint {args.checkpoint} is not a directory: give a checkpoint dir", file=sys.stderr)
        return 2
    p = dict(QUICK if args.quick else FULL)
    for item in args.param:
        key, _, value = item.partition("=")
        if key not in p or not value.isdigit() or int(value) < 1:
            print(f"error: --param {item!r}: give KEY=N with N >= 1 and KEY one of {', '.join(p)}", file=sys.stderr)
            return 2
        p[key] = int(value)
    out = report_dir(ap, args.out)
    results, n_pairs = measure(args.checkpoint, names, out, p, args.threads)
    run = {"checkpoint": str(args.checkpoint), "quick": args.quick, "threads": args.threads, "params": p,
           "ppl_pairs": n_pairs, "machine": machine_info(), "results": results}
    (out / "results.json").write_text(json.dumps(run, indent=1, default=_json_default))
    write_report(run, out)
    plot(run, out)
    print(f"wrote {out / 'report.md'}")
    return 0


def _json_default(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
