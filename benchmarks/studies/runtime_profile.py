"""Profile this runtime on one exported model: import time, load time, first-token latency, decode
ms/token, Python overhead outside onnxruntime per token, peak RSS, and what the chat KV cache saves.

    python -m benchmarks.studies.runtime_profile MODEL_DIR [--threads 2] [--history 64] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import dialogpt_onnx.runtime; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[2]).stdout) for _ in range(3)]
    return statistics.median(runs)


def profile(model_dir: str, threads: int, history: int, new_tokens: int, repeats: int) -> dict:
    from dialogpt_onnx import runtime
    from dialogpt_onnx.runtime.generate import generate_ids

    t = time.perf_counter()
    model = runtime.load(model_dir, threads=threads)
    load_s = time.perf_counter() - t
    dec = model.graph.new_cache()
    prompt = [int(x) for x in np.random.default_rng(0).integers(200, 20000, history)]
    opts = model.options(max_new_tokens=new_tokens)  # greedy, the default path; EOS does not stop it below

    run_time = [0.0]
    real = {name: getattr(model.graph.ort_session, name) for name in ("run", "run_with_iobinding")}

    def timed(fn):  # time spent inside onnxruntime
        def run(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            run_time[0] += time.perf_counter() - t0
            return out
        return run

    for name, fn in real.items():
        setattr(model.graph.ort_session, name, timed(fn))
    first, decode, overhead = [], [], []
    for r in range(repeats + 1):
        stamps = []
        t0 = time.perf_counter()
        for _ in generate_ids(dec, [prompt], opts, model.eos, stop_at_eos=False):
            stamps.append(time.perf_counter())
            if len(stamps) == 1:
                run_time[0] = 0.0  # count onnxruntime time of decode steps only
        n = len(stamps) - 1
        if r == 0:
            continue  # warm-up
        first.append((stamps[0] - t0) * 1e3)
        per_token = (stamps[-1] - stamps[0]) / n
        decode.append(per_token * 1e3)
        overhead.append((per_token - run_time[0] / n) * 1e3)
    for name, fn in real.items():
        setattr(model.graph.ort_session, name, fn)

    # The chat cache: a 10-turn chat, once with the cache kept across turns, once recomputing every turn.
    turns = ["Hi there, how are you doing today?", "Do you like to read books?", "What was the last one?",
             "I love science fiction, especially space stories.", "Have you seen any good movies lately?",
             "I want to travel to Japan next year.", "What food do you like?", "Do you play any sports?",
             "Tell me something interesting.", "It was nice talking to you."]
    chat_ms = {}
    for mode in ("cached", "recompute"):
        chat = model.chat(max_new_tokens=24, min_new_tokens=24, max_history_tokens=1024, greedy=True)
        t0 = time.perf_counter()
        for text in turns:
            if mode == "recompute":
                chat.release()  # forget the cache: prefill the whole history again
            chat.send(text)
        chat_ms[mode] = {"seconds": time.perf_counter() - t0, "prefilled_tokens": chat.stats["prefilled_tokens"],
                         "history_tokens": sum(map(len, chat.turns))}
    return {
        "model_dir": str(model_dir), "variant": model.manifest.variant, "graph": model.manifest.graph,
        "threads": threads, "history_tokens": history, "new_tokens": new_tokens,
        "import_seconds": import_seconds(), "load_seconds": load_s,
        "first_token_ms": spread(first), "decode_ms_per_token": spread(decode),
        "python_overhead_ms_per_token": spread(overhead),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "chat_10_turns": chat_ms,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--history", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    res = profile(a.model_dir, a.threads, a.history, a.new_tokens, a.repeats)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))

    def fmt(s: dict) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}, n={s['n']})"

    c = res["chat_10_turns"]
    print(f"{res['model_dir']} [{res['graph']} {res['variant']}, {res['threads']} threads]")
    print(f"  import runtime        {res['import_seconds'] * 1e3:.0f} ms; load {res['load_seconds'] * 1e3:.0f} ms")
    print(f"  first token           {fmt(res['first_token_ms'])} ms after a {res['history_tokens']}-token history")
    print(f"  decode                {fmt(res['decode_ms_per_token'])} ms/token")
    print(f"  Python overhead       {fmt(res['python_overhead_ms_per_token'])} ms/token outside session.run")
    print(f"  peak RSS              {res['peak_rss_mb']:.0f} MB")
    print(f"  10-turn chat          cached {c['cached']['seconds']:.2f} s ({c['cached']['prefilled_tokens']} tokens "
          f"prefilled) vs recompute {c['recompute']['seconds']:.2f} s ({c['recompute']['prefilled_tokens']})")


if __name__ == "__main__":
    main()
