"""The benchmark suite: this runtime vs PyTorch, Optimum, CTranslate2 (and llama.cpp when installed),
same prompts, same new tokens, same threads, engines interleaved per repeat.

    dialogpt-onnx bench [--models small,medium,large | --model DIR] [--engines a,b] [--quick] --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from dialogpt_onnx.runtime.cli import OneLineParser, nonnegative_int, positive_int

from .engines import Engine, dir_size, greedy_agreement
from .machine import machine_info
from .outdir import report_dir
from .random_checkpoint import LABEL, make_random_checkpoint
from .registry import all_engines
from .report import write_report
from .worker import Worker

REFERENCE = "pytorch-fp32"
# --quick: ours, the reference and one peer of each family, so every code path runs in about a minute
QUICK_ENGINES = "pytorch-fp32,ours-fp32,ours-int8,ours-int4,ctranslate2-int8,optimum-fp32,llama.cpp-Q8_0,openvino-int4"


def dialogue_tokens(n_tokens: int, offset: int = 0) -> list[int]:
    """Real dialogue (Topical-Chat test turns, each followed by EOS), cut to n_tokens."""
    from dialogpt_onnx.corpora import tokenizer_files, topical_chat
    from dialogpt_onnx.export.tokenizer import build_tokenizer
    from dialogpt_onnx.runtime.text import EOS_TOKEN_ID, encode_dialogue

    tok = build_tokenizer(tokenizer_files())
    ids: list[int] = []
    for conv in topical_chat("test_freq")[offset:]:
        ids += encode_dialogue(tok, conv, EOS_TOKEN_ID)
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def bench_model(label: str, src: Path, engines: list[Engine], work: Path, a: argparse.Namespace) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}  # engine -> why it was not measured
    workers: dict[str, Worker] = {}
    for e in tqdm(engines, desc=f"{label}: convert + load", unit="engine"):
        try:
            art = e.prepare(src, work, a.threads)
            w = Worker(e, art, a.threads)
        except Exception as ex:  # noqa: BLE001 - one engine failing must not stop the suite
            failed[e.name] = f"failed to prepare ({type(ex).__name__}: {str(ex)[:200]})"
            print(f"  {e.name}: {failed[e.name]}; skipped", file=sys.stderr)
            continue
        if "error" in w.hello:
            failed[e.name] = f"failed to load ({w.hello['error'][:200]})"
            print(f"  {e.name}: {failed[e.name]}; skipped", file=sys.stderr)
            continue
        workers[e.name] = w
        results[e.name] = {"family": e.family, "quantized": e.quantized, "size_mb": dir_size(art) / 1e6,
                           "load_s": w.hello["load_s"], "first_token_ms": {}, "decode": []}

    decode_hist = 64
    prompts = {h: dialogue_tokens(h) for h in sorted(set(a.histories) | {decode_hist})}
    first: dict[str, dict[int, list[float]]] = {n: {h: [] for h in prompts} for n in workers}
    decode: dict[str, list[float]] = {n: [] for n in workers}
    total = (a.warmup + a.repeats) * len(workers)
    with tqdm(total=total, desc=f"{label}: timing", unit="run") as bar:
        for r in range(a.warmup + a.repeats):
            order = list(workers)[r % max(len(workers), 1):] + list(workers)[:r % max(len(workers), 1)]
            for name in order:  # interleaved: machine drift hits every engine alike
                w = workers[name]
                t1 = {h: w.call(ids, 1).get("seconds", float("nan")) for h, ids in prompts.items()}
                # decode = (end - first new token) / (N - 1), both times taken inside one call
                res = w.call(prompts[decode_hist], a.new_tokens)
                if r >= a.warmup and "decode_s" in res:
                    for h in prompts:
                        first[name][h].append(t1[h] * 1e3)
                    decode[name].append(res["decode_s"] / (a.new_tokens - 1) * 1e3)
                bar.update(1)

    # fidelity: greedy agreement with PyTorch fp32 on real dialogue, outside the timed runs
    ref_outputs = {}
    agreement_prompts = [dialogue_tokens(48, offset=k * 7) for k in range(a.agreement_prompts)]
    for name, w in tqdm(workers.items(), desc=f"{label}: greedy agreement", unit="engine"):
        ref_outputs[name] = [w.call(p, a.new_tokens).get("ids", []) for p in agreement_prompts]
    for name, w in workers.items():
        res = results[name]
        res["first_token_ms"] = {str(h): spread(v) for h, v in first[name].items()}
        res["decode_ms_per_token"] = spread(decode[name])
        res["tokens_per_s"] = 1e3 / res["decode_ms_per_token"]["median"] if decode[name] else None
        if REFERENCE in ref_outputs:
            res["greedy_agreement_vs_pytorch_fp32"] = statistics.mean(
                greedy_agreement(x, y) for x, y in zip(ref_outputs[name], ref_outputs[REFERENCE], strict=True))
        res["peak_rss_mb"] = w.stop()
        del res["decode"]
    return {"source": str(src), "label": label, "engines": results, "decode_history": decode_hist, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="dialogpt-onnx bench", description=__doc__, examples=(
        "dialogpt-onnx bench --quick --out /tmp/bench        # every engine's code path in a minute",
        "dialogpt-onnx bench --models small,medium --out benchmarks/results/today"))
    p.add_argument("--models", default="small", help="comma list of small, medium, large (random weights)")
    p.add_argument("--model", help="a real checkpoint dir instead of --models")
    p.add_argument("--engines", help="comma list (default: all installed): " + ", ".join(e.name for e in all_engines()))
    p.add_argument("--quick", action="store_true", help="tiny model, few repeats: the whole pipeline in a minute")
    p.add_argument("--out", required=True)
    p.add_argument("--report-only", action="store_true", help="rewrite report.md and plots from OUT/results.json")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--warmup", type=nonnegative_int, default=1)
    p.add_argument("--new-tokens", type=positive_int, default=64)
    p.add_argument("--histories", default="16,64,128,512", help="first-token latency at these history lengths")
    p.add_argument("--agreement-prompts", type=positive_int, default=4)
    a = p.parse_args(argv)
    a.histories = [int(x) for x in a.histories.split(",")]
    if a.quick:
        a.models, a.repeats, a.warmup, a.new_tokens, a.histories, a.agreement_prompts = "tiny", 2, 1, 16, [16, 64], 2
        a.engines = a.engines or QUICK_ENGINES
    out = Path(a.out)
    if not a.report_only:
        report_dir(p, a.out)
    if a.report_only:
        write_report(json.loads((out / "results.json").read_text()), out)
        print(f"wrote {out / 'report.md'} and plots")
        return 0
    out.mkdir(parents=True, exist_ok=True)

    engines = all_engines()
    if a.engines:
        wanted = a.engines.split(",")
        unknown = set(wanted) - {e.name for e in engines}
        if unknown:
            print(f"error: unknown engines {sorted(unknown)}: choose from {[e.name for e in engines]}", file=sys.stderr)
            return 2
        engines = [e for e in engines if e.name in wanted]
    ready = []
    for e in engines:
        missing = e.missing()
        if missing:
            print(f"skipping {e.name}: {', '.join(missing)} not installed")
        else:
            ready.append(e)

    run = {"machine": machine_info(), "settings": {k: v for k, v in vars(a).items() if k != "out"}, "models": {}}
    sources = [("custom", Path(a.model))] if a.model else [(m, None) for m in a.models.split(",")]
    t0 = time.time()
    for label, src in sources:
        if src is None:
            src = out / "checkpoints" / label
            if not (src / "config.json").is_file():
                make_random_checkpoint(label, src)
        res = bench_model(label, src, ready, out / "work" / label, a)
        res["weights"] = LABEL if label != "custom" else "real checkpoint"
        run["models"][label] = res
        (out / "results.json").write_text(json.dumps(run, indent=2))
    run["seconds"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(run, indent=2))
    write_report(run, out)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {out}")
    failed = {f"{label}/{name}": why for label, res in run["models"].items() for name, why in res["failed"].items()}
    empty = [label for label, res in run["models"].items() if not res["engines"]]
    if failed or empty or not ready:
        print("error: the run is incomplete: " + "; ".join(
            [*(f"{k} {v}" for k, v in failed.items()), *(f"{label}: nothing measured" for label in empty),
             *([] if ready else ["no engine is installed"])]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
