"""report.md (tables with ratios vs PyTorch fp32 and vs the best peer, targets) and PNG plots."""

from __future__ import annotations

from pathlib import Path

# (model, ours, peer, factor): ours must decode `factor` times faster than peer
TARGETS = [
    ("small", "ours-int8", "llama.cpp-Q8_0", 1.4), ("small", "ours-int8", "optimum-int8", 3.5),
    ("small", "ours-int8", "ctranslate2-int8", 4.5), ("small", "ours-int8", "pytorch-fp32", 9.0),
    ("small", "ours-int4", "llama.cpp-Q4_0", 1.6), ("medium", "ours-int8", "llama.cpp-Q8_0", 1.5),
    ("small", "ours-int8", "openvino-int8", 1.0), ("small", "ours-int4", "openvino-int4", 1.0),
]
FIRST_TOKEN_TARGET_MS = ("small", "ours-int8", 12.0)
# (model, engine, relative to, at most this many times its first token at a 64-token history)
FIRST_TOKEN_RATIOS = [("small", "ours-int4", "ours-int8", 1.2), ("small", "ours-int4", "openvino-int4", 1.0),
                      ("small", "ours-int8", "openvino-int8", 1.0)]


def _dec(e: dict) -> float | None:
    d = e.get("decode_ms_per_token") or {}
    return d.get("median")


def _ft(e: dict, h: str) -> str:
    d = e.get("first_token_ms", {}).get(h) or {}
    return f"{d['median']:.1f}" if d else "–"


def model_table(m: dict) -> list[str]:
    engines = m["engines"]
    ref = _dec(engines.get("pytorch-fp32", {}))
    peers = {n: _dec(e) for n, e in engines.items() if e["family"] != "ours" and _dec(e)}
    best_peer = min(peers, key=peers.get) if peers else None
    hs = sorted({h for e in engines.values() for h in e.get("first_token_ms", {})}, key=int)
    head = ["engine", "decode ms/token (median, range)", "tokens/s", *[f"first token ms @{h}" for h in hs],
            "× vs PyTorch fp32", f"× vs best peer ({best_peer})", "load s", "size MB", "peak RSS MB",
            "greedy agreement vs PyTorch fp32"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in sorted(engines.items(), key=lambda kv: _dec(kv[1]) or 1e9):
        d = e.get("decode_ms_per_token") or {}
        dec = _dec(e)
        cells = [f"**{name}**" if e["family"] == "ours" else name,
                 f"{d['median']:.2f} ({d['min']:.2f}–{d['max']:.2f})" if d else "–",
                 f"{e['tokens_per_s']:.0f}" if e.get("tokens_per_s") else "–",
                 *[_ft(e, h) for h in hs],
                 f"{ref / dec:.2f}×" if ref and dec else "–",
                 f"{peers[best_peer] / dec:.2f}×" if best_peer and dec else "–",
                 f"{e['load_s']:.2f}", f"{e['size_mb']:.1f}", f"{e.get('peak_rss_mb', float('nan')):.0f}",
                 f"{e['greedy_agreement_vs_pytorch_fp32']:.2f}" if "greedy_agreement_vs_pytorch_fp32" in e else "–"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _unmeasured(run: dict, model: str, figures: dict[str, float | None]) -> str:
    """Why a target has no figure: the run had other models, or these engines were not in it."""
    if model not in run["models"]:
        return f"this run's models: {', '.join(run['models']) or 'none'}"
    return f"{' and '.join(n for n, v in figures.items() if v is None)} not in this run"


def targets(run: dict) -> list[str]:
    out = ["| target | measured | verdict |", "|---|---|---|"]
    for model, ours, peer, factor in TARGETS:
        eng = run["models"].get(model, {}).get("engines", {})
        a, b = _dec(eng.get(ours, {})), _dec(eng.get(peer, {}))
        goal = f"{model}: {ours} ≥ {factor}× faster than {peer}"
        if a is None or b is None:
            out.append(f"| {goal} | not measured ({_unmeasured(run, model, {ours: a, peer: b})}) | – |")
            continue
        ratio = b / a
        verdict = "met" if ratio >= factor else f"missed by {(factor - ratio) / factor:.0%}"
        out.append(f"| {goal} | {ratio:.2f}× ({a:.2f} vs {b:.2f} ms/token) | {verdict} |")
    model, ours, limit = FIRST_TOKEN_TARGET_MS
    e = run["models"].get(model, {}).get("engines", {}).get(ours, {})
    ft = (e.get("first_token_ms", {}).get("64") or {}).get("median")
    goal = f"{model}: {ours} first token at 64-token history ≤ {limit:.0f} ms"
    if ft is None:
        out.append(f"| {goal} | not measured | – |")
    else:
        verdict = "met" if ft <= limit else f"missed: {ft / limit:.1f}× the target"
        out.append(f"| {goal} | {ft:.1f} ms | {verdict} |")
    for model, ours, other, factor in FIRST_TOKEN_RATIOS:
        eng = run["models"].get(model, {}).get("engines", {})
        a, b = (((eng.get(n) or {}).get("first_token_ms", {}).get("64") or {}).get("median") for n in (ours, other))
        goal = f"{model}: {ours} first token @64 ≤ {factor}× {other}'s"
        if a is None or b is None:
            out.append(f"| {goal} | not measured ({_unmeasured(run, model, {ours: a, other: b})}) | – |")
            continue
        verdict = "met" if a <= factor * b else f"missed: {a / b:.2f}×"
        out.append(f"| {goal} | {a / b:.2f}× ({a:.1f} vs {b:.1f} ms) | {verdict} |")
    return out


def plots(run: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    models = list(run["models"])
    first = run["models"][models[0]]["engines"]
    names = sorted({n for m in models for n in run["models"][m]["engines"]},
                   key=lambda n: -(_dec(first.get(n, {})) or 0))  # fastest at the top
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.42 * len(names) * max(1, len(models) / 1.5)))
    height = 0.8 / max(len(models), 1)
    for k, m in enumerate(models):
        eng = run["models"][m]["engines"]
        stats = [eng.get(n, {}).get("decode_ms_per_token") or {} for n in names]
        vals = [s.get("median", 0) for s in stats]
        err = [[v - s.get("min", v) for v, s in zip(vals, stats, strict=True)],
               [s.get("max", v) - v for v, s in zip(vals, stats, strict=True)]]
        ax.barh([i + k * height for i in range(len(names))], vals, height, xerr=err, capsize=2, label=m)
    ax.set_yticks([i + height * (len(models) - 1) / 2 for i in range(len(names))])
    ax.set_yticklabels(names)
    for t in ax.get_yticklabels():
        if t.get_text().startswith("ours"):
            t.set_fontweight("bold")
    ax.set_xlabel("decode ms/token, median and range (lower is better)")
    ax.set_title(f"Decode speed: {run['settings']['threads']} threads, greedy, 64-token history")
    ax.legend(title="model", loc="lower right")
    fig.tight_layout()
    f = out / "decode_ms_per_token.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(f.name)
    for m in models:
        eng = run["models"][m]["engines"]
        fig, ax = plt.subplots(figsize=(7.5, 5))
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
        for n, e in sorted(eng.items()):
            hs = sorted(e.get("first_token_ms", {}), key=int)
            if hs:
                ax.plot([int(h) for h in hs], [e["first_token_ms"][h]["median"] for h in hs], marker="o",
                        label=n, linewidth=2.5 if e["family"] == "ours" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("history tokens")
        ax.set_ylabel("first-token latency ms (log)")
        ax.set_title(f"First token vs history ({m})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        f = out / f"first_token_{m}.png"
        fig.savefig(f, dpi=120)
        plt.close(fig)
        files.append(f.name)
    return files


def write_report(run: dict, out: Path) -> None:
    mi = run["machine"]
    lines = ["# Benchmark report", "",
             f"{mi['date']} · {mi['cpu']} · {mi['cores']} cores · flags: {' '.join(mi['flags'])}",
             f"threads {run['settings']['threads']} · {run['settings']['new_tokens']} new tokens (greedy, EOS banned) "
             f"· {run['settings']['repeats']} repeats after {run['settings']['warmup']} warm-up, engines interleaved",
             "versions: " + ", ".join(f"{k} {v}" for k, v in mi["versions"].items()), ""]
    for label, m in run["models"].items():
        lines += [f"## {label} ({m['weights']})", "", *model_table(m), ""]
    lines += ["## Targets", "", *targets(run), ""]
    for f in plots(run, out):
        lines += [f"![{f}]({f})", ""]
    (out / "report.md").write_text("\n".join(lines))
