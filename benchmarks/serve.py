"""Load test of the HTTP server: 1, 4, 8, 16 concurrent chat clients on loopback, and two hostile cases.

    python -m benchmarks.serve [CHECKPOINT ...] [--clients 1,4,8,16] [--quick] [--out DIR]

Each CHECKPOINT (default: DialoGPT-small with random weights, and the bundled model) is exported to int8
and served by `dialogpt-onnx serve` in its own process (max batch = the most clients) with an API key and
per-chat cache isolation on, as it would face users. Per level, every client holds its own multi-turn
chat (Topical-Chat test_freq turns; each request carries the whole conversation, as an OpenAI client
does, so the prefix cache is exercised) and streams every reply; replies are forced to a fixed length
(min_tokens = max_tokens) so levels compare. Measured per level: tokens/s over the level's wall time,
time to first token (TTFT) and time per output token after the first (TPOT, per request) as p50 / p99,
and errors. Then:
- big requests beside 8 streaming chats: the longest gap between tokens of those streams while a 10 MB
  body (refused, 413) and a 1 MiB body of ~30,000 messages (the largest admitted; parsed and tokenized
  off the event loop) are sent, against the longest gap in the second before them;
- stored chats: the median latency of a 1-token request (a new chat) with an empty prefix cache and with
  4,000 chats stored (one tenant's: the index's worst case).
Bounded: a fixed number of turns per client and a time limit per level. Writes results.json, report.md
and serve.png.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from tqdm import tqdm

from .machine import machine_info
from .outdir import report_dir, write_results

ROOT = Path(__file__).resolve().parents[1]
FULL = {"clients": [1, 4, 8, 16], "turns": 6, "max_tokens": 32, "level_timeout_s": 600, "step_repeats": 3}
QUICK = {"clients": [1, 2], "turns": 2, "max_tokens": 6, "level_timeout_s": 120, "step_repeats": 1}
QUICK.update(stored_chats=200, probes=20, stream_tokens=32, big_tries=1)
FULL.update(stored_chats=4000, probes=100, stream_tokens=32, big_tries=5)
TARGETS = {"speedup_at_8": 4.0, "p99_tpot_ratio_at_8": 2.0, "big_request_stall_ms": 50.0, "stored_chats_ratio": 1.5}
API_KEY = "load-test-key-" + "0" * 16  # the server runs with auth on, as it would face users
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def user_turns(n_chats: int, turns: int, offset: int = 0) -> list[list[str]]:
    """Per chat, its user turns: one speaker's turns of a held-out Topical-Chat conversation; chats
    offset..offset+n-1, so that levels given disjoint offsets share no chat (no KV reuse across levels)."""
    from dialogpt_onnx.corpora import topical_chat

    convs = [c for c in topical_chat("test_freq") if len(c) >= 2 * turns]
    return [convs[(offset + i) % len(convs)][0::2][:turns] for i in range(n_chats)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dialogpt-onnx serve` in its own process, on a free loopback port; stopped by SIGTERM."""

    def __init__(self, model_dir: Path, max_batch: int, threads: int, *flags: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(model_dir), "--port", port,
                                      "--max-batch", str(max_batch), "--max-queue", str(4 * max_batch),
                                      "--threads", str(threads), "--admin-key", API_KEY, "--no-access-log", *flags],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()[-500:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health within 120 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chat_client(url: str, turns: list[str], max_tokens: int, deadline: float, out: list[dict]) -> None:
    """One user: a multi-turn chat, each reply streamed; one record per request."""
    messages: list[dict] = []
    salt = uuid.uuid4().hex  # this user's own key to the server's cached chats
    with httpx.Client(timeout=300, headers=AUTH) as http:
        for text in turns:
            if time.monotonic() > deadline:
                return
            messages.append({"role": "user", "content": text})
            body = {"messages": messages, "max_tokens": max_tokens, "min_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "cache_salt": salt}
            rec: dict = {"ok": False}
            t0 = time.perf_counter()
            stamps, reply = [], []
            try:
                with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        rec["error"] = f"HTTP {r.status_code}"
                    else:
                        for line in r.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            msg = json.loads(line[6:])
                            if msg.get("usage"):
                                rec["tokens"] = msg["usage"]["completion_tokens"]
                                continue
                            piece = msg["choices"][0]["delta"].get("content")
                            if piece:
                                stamps.append(time.perf_counter())
                                reply.append(piece)
                        rec["ok"] = bool(stamps) and rec.get("tokens") == max_tokens
            except httpx.HTTPError as e:
                rec["error"] = type(e).__name__
            if "error" not in rec and not rec["ok"]:
                rec["error"] = f"{rec.get('tokens')} tokens streamed, {max_tokens} asked"
            if rec["ok"]:
                rec["ttft"] = stamps[0] - t0
                # pieces are tokens except where a character spans tokens: time per token is over the reply
                rec["tpot"] = (stamps[-1] - stamps[0]) / max(rec["tokens"] - 1, 1)
                rec["end"] = stamps[-1]
            out.append(rec)
            messages.append({"role": "assistant", "content": "".join(reply) or "ok"})


def run_level(url: str, chats: list[list[str]], max_tokens: int, timeout_s: float) -> dict:
    before = httpx.get(f"{url}/health", timeout=10, headers=AUTH).json()["prefix_cache"]
    records: list[dict] = []
    deadline = time.monotonic() + timeout_s
    t0 = time.perf_counter()
    threads = [threading.Thread(target=chat_client, args=(url, turns, max_tokens, deadline, records))
               for turns in chats]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in records if r["ok"]]
    wall = max((r["end"] for r in ok), default=time.perf_counter()) - t0
    ttft, tpot = [r["ttft"] * 1e3 for r in ok], [r["tpot"] * 1e3 for r in ok]
    after = httpx.get(f"{url}/health", timeout=10, headers=AUTH).json()["prefix_cache"]
    return {"clients": len(chats), "requests": len(records), "errors": len(records) - len(ok),
            "kv_reused_turns": after["hits"] - before["hits"],
            "kv_reused_tokens": after["reused_tokens"] - before["reused_tokens"],
            "tokens": sum(r["tokens"] for r in ok), "seconds": wall,
            "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_ms": {"p50": statistics.median(ttft), "p99": percentile(ttft, 99)} if ok else None,
            "tpot_ms": {"p50": statistics.median(tpot), "p99": percentile(tpot, 99)} if ok else None}


def stream_gaps(url: str, text: str, tokens: int, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """Streamed replies of `tokens` tokens, one after another until `stop`: (time, gap since the previous
    token of the same reply) per token."""
    with httpx.Client(timeout=300, headers=AUTH) as http:
        while not stop.is_set():
            body = {"messages": [{"role": "user", "content": text}], "max_tokens": tokens, "min_tokens": tokens,
                    "stream": True, "cache_salt": uuid.uuid4().hex}
            last = None
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        now = time.monotonic()  # the sender's clock too (a token's chunk; not the role's)
                        if last is not None:
                            out.append((now, now - last))
                        last = now


# Run as `python -c BIG_SENDER URL KEY`: once a line comes on stdin, a 10 MB body, then a 1 MiB one of as many
# messages as the default body limit admits; prints their answers and when they were sent (time.monotonic(),
# the system's clock: comparable across processes) as JSON.
BIG_SENDER = """
import json, sys, time
import httpx
url, key = sys.argv[1:]
one = json.dumps({"role": "user", "content": "hi"}) + ", "
n = ((1 << 20) - 20) // len(one)
bodies = [b"{" + b" " * (10 << 20) + b"}", json.dumps({"messages": [{"role": "user", "content": "hi"}] * n}).encode()]
statuses = []
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for body in bodies:
    try:
        r = httpx.post(url + "/v1/chat/completions", content=body, timeout=60,
                       headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        statuses.append(r.status_code)
    except httpx.HTTPError as e:  # the server may close before a 10 MB body is all sent
        statuses.append(type(e).__name__)
print(json.dumps({"statuses": statuses, "body_bytes": [len(b) for b in bodies], "messages": n, "t0": t0,
                  "t1": time.monotonic()}))
"""


def rss_mb(pid: int) -> float:
    """A process's resident memory now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_requests(url: str, chats: int, tokens: int, pid: int) -> dict:
    """The longest token gap of `chats` streams while big bodies are sent, against the second before."""
    gaps: list[tuple[float, float]] = []
    stop = threading.Event()
    streams = [threading.Thread(target=stream_gaps, args=(url, f"Tell me about {w}.", tokens, stop, gaps))
               for w in ("music", "films", "books", "football", "cooking", "travel", "science", "art")[:chats]]
    for t in streams:
        t.start()
    # sent from another process: this one's threads time the streams, and sending 10 MB would hold its GIL
    sender = subprocess.Popen([sys.executable, "-c", BIG_SENDER, url, API_KEY], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None and sender.stdin is not None
    sender.stdout.readline()  # "ready": its start-up is over
    time.sleep(2.0)  # all streams under way, and a quiet while to compare with
    rss_before = rss_mb(pid)
    sender.stdin.write("go\n")
    sender.stdin.flush()
    result = json.loads(sender.stdout.readline())
    sender.wait(timeout=60)
    t0, t1 = result.pop("t0"), result.pop("t1")
    rss_after = rss_mb(pid)
    time.sleep(0.2)
    stop.set()
    for t in streams:
        t.join()
    during = [g for at, g in gaps if t0 <= at <= t1 + 0.2]
    quiet = [g for at, g in gaps if t0 - (t1 - t0) - 0.2 <= at < t0]  # as long a window, just before
    return {**result, "seconds": t1 - t0, "tokens_during": len(during), "rss_mb": [rss_before, rss_after],
            "max_gap_ms": max(during, default=0.0) * 1e3, "quiet_max_gap_ms": max(quiet, default=0.0) * 1e3,
            "stall_ms": (max(during, default=0.0) - max(quiet, default=0.0)) * 1e3}


def one_token_ms(url: str, prompts: list[str]) -> list[float]:
    """Latency of 1-token requests, each a new chat of the key's tenant (stored afterwards)."""
    out = []
    with httpx.Client(timeout=60, headers=AUTH) as http:
        for p in prompts:
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": p}],
                                                              "max_tokens": 1})
            out.append((time.perf_counter() - t0) * 1e3)
            if r.status_code != 200:
                raise RuntimeError(f"stored-chats probe: HTTP {r.status_code}: {r.text[:200]}")
    return out


def stored_chats(model_dir: Path, threads: int, n: int, probes: int) -> dict:
    """1-token latency (a new chat each time) on a server whose prefix cache is empty and on one holding n
    chats of one tenant; both servers up at once and probed in turn, so that the machine's drift hits both."""
    turns = [f"{t} ({i})" for i, t in enumerate(x for c in user_turns(n + 2 * probes, 1) for x in c)]
    empty, full = (Server(model_dir, 1, threads, "--prefix-cache-mb", "8192") for _ in range(2))
    try:
        for i in tqdm(range(0, n, 100), desc="storing chats", unit="100 chats"):
            one_token_ms(full.url, turns[i:i + 100])
        stats = httpx.get(f"{full.url}/health", headers=AUTH, timeout=10).json()["prefix_cache"]
        one_token_ms(empty.url, ["warm-up"] * min(n, 500))  # as warm as the other (one chat, stored again)
        times: dict[str, list[float]] = {"empty": [], "full": []}
        for i in range(probes):
            times["empty"] += one_token_ms(empty.url, [turns[n + 2 * i]])
            times["full"] += one_token_ms(full.url, [turns[n + 2 * i + 1]])
    finally:
        empty.stop()
        full.stop()
    e, f = times["empty"], times["full"]
    return {"stored": stats["chats"], "empty_ms": statistics.median(e), "full_ms": statistics.median(f),
            "empty_p99_ms": percentile(e, 99), "full_p99_ms": percentile(f, 99),
            "ratio": statistics.median(f) / statistics.median(e)}


def export_int8(checkpoint: Path, out: Path, threads: int) -> Path:
    from dialogpt_onnx.export import ExportOptions, export_model

    if not (out / "manifest.json").is_file():
        export_model(str(checkpoint), out, ExportOptions(variant="int8", overwrite=True, progress=False, n_prompts=1,
                                                         parity_tokens=8, threads=threads))
    return out


def step_cost(model_dir: Path, threads: int, rows: tuple[int, ...], history: int = 96, steps: int = 30,
              repeats: int = 3) -> dict[int, dict]:
    """The graph's own cost of one decode step over k rows (the engine's shared call, no HTTP, no
    Python around it), ms: median (min-max) over repeats of the median step. Bounds what batching can
    give: tokens/s at k chats <= k / (cost(k) / cost(1)) x one chat's."""
    from dialogpt_onnx import runtime

    model = runtime.load(model_dir, threads=threads)
    runs: dict[int, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        for k in rows:  # interleaved, so that drift on a shared machine hits every k alike
            cache = model.graph.new_cache()
            cache.reset(max(rows))
            cache.prefill([list(range(1000, 1000 + history))] * k)
            times = []
            for i in range(steps):
                t0 = time.perf_counter()
                cache.prefill([[500 + i]] * k)
                times.append((time.perf_counter() - t0) * 1e3)
            runs[k].append(statistics.median(times[3:]))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in runs.items()}


def bench_model(model_dir: Path, p: dict, threads: int) -> dict:
    steps = step_cost(model_dir, threads, tuple(p["clients"]), repeats=p["step_repeats"])
    levels = []
    server = Server(model_dir, max_batch=max(p["clients"]), threads=threads)
    try:
        run_level(server.url, user_turns(1, 1, offset=-1), p["max_tokens"], p["level_timeout_s"])  # warm-up
        offset = 0
        for n in tqdm(p["clients"], desc=f"{model_dir.name}: clients", unit="level"):
            chats = user_turns(n, p["turns"], offset)
            offset += n
            levels.append(run_level(server.url, chats, p["max_tokens"], p["level_timeout_s"]))
        # the longest gap is a noisy statistic: the median stall of a few tries
        tries = [big_requests(server.url, 8, p["stream_tokens"], server.proc.pid) for _ in range(p["big_tries"])]
        hostile = {**sorted(tries, key=lambda t: t["stall_ms"])[len(tries) // 2],
                   "stall_ms_tries": [t["stall_ms"] for t in tries]}
    finally:
        server.stop()
    stored = stored_chats(model_dir, threads, p["stored_chats"], p["probes"])
    return {"step_ms": steps, "levels": levels, "big_requests": hostile, "stored_chats": stored,
            "targets": {**target_check(levels), "big_request_stall_met": hostile["stall_ms"] <=
                        TARGETS["big_request_stall_ms"], "stored_chats_met": stored["ratio"] <=
                        TARGETS["stored_chats_ratio"]}}


def target_check(levels: list[dict]) -> dict:
    by = {lv["clients"]: lv for lv in levels if lv["tpot_ms"]}
    if 1 not in by or 8 not in by:
        return {}
    speedup = by[8]["tokens_per_s"] / by[1]["tokens_per_s"]
    ratio = by[8]["tpot_ms"]["p99"] / by[1]["tpot_ms"]["p99"]
    return {"speedup_at_8": speedup, "speedup_met": speedup >= TARGETS["speedup_at_8"],
            "p99_tpot_ratio_at_8": ratio, "p99_tpot_met": ratio <= TARGETS["p99_tpot_ratio_at_8"]}


def write_report(run: dict, out: Path) -> None:
    m, p = run["machine"], run["params"]
    text = [f"# Server load test ({'quick' if run['quick'] else 'full'} run)", "",
            f"{m['date']} · {m['cpu']} · {m['cores']} cores · flags: {' '.join(m['flags'])} · "
            f"{run['threads']} onnxruntime threads · int8 models", "",
            f"Each client: a {p['turns']}-turn chat, every reply streamed and {p['max_tokens']} tokens long; "
            "TTFT = time to first token, TPOT = time per output token after the first (per request).", ""]
    for name, res in run["models"].items():
        text += [f"## {name}", "", "| clients | requests | errors | tokens/s | TTFT p50 / p99 (ms) | "
                 "TPOT p50 / p99 (ms) | turns from cached KV |", "|---|---|---|---|---|---|---|"]
        for lv in res["levels"]:
            if lv["tpot_ms"] is None:
                text.append(f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | - | - | - | - |")
                continue
            text.append(f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | {lv['tokens_per_s']:.1f} | "
                        f"{lv['ttft_ms']['p50']:.0f} / {lv['ttft_ms']['p99']:.0f} | "
                        f"{lv['tpot_ms']['p50']:.1f} / {lv['tpot_ms']['p99']:.1f} | {lv['kv_reused_turns']} |")
        st = res.get("step_ms")
        if st:
            one = st[min(st, key=int)]["median"]
            text += ["", "The graph's own decode step over k rows (no server), ms, median (min–max) of "
                     f"{p['step_repeats']}: " + "; ".join(
                         f"k = {k}: {v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f}), {v['median'] / one:.2f}×"
                         for k, v in st.items()) + "."]
        b, c = res["big_requests"], res["stored_chats"]
        met = {k: "met" if res["targets"].get(k) else "missed" for k in ("big_request_stall_met", "stored_chats_met")}
        text += ["", "| hostile case | measured | target |", "|---|---|---|",
                 f"| one 10 MB request + one 1 MiB request of {b['messages']:,} messages beside 8 streaming chats "
                 f"(answers {', '.join(map(str, b['statuses']))}) | longest token gap {b['max_gap_ms']:.0f} ms vs "
                 f"{b['quiet_max_gap_ms']:.0f} ms without: stall {b['stall_ms']:.0f} ms (median of "
                 f"{len(b['stall_ms_tries'])}: {', '.join(f'{x:.0f}' for x in b['stall_ms_tries'])}); server memory "
                 f"{b['rss_mb'][0]:.0f} → {b['rss_mb'][1]:.0f} MB | ≤ "
                 f"{TARGETS['big_request_stall_ms']:.0f} ms: {met['big_request_stall_met']} |",
                 f"| {c['stored']:,} stored chats (one tenant) | 1-token request {c['full_ms']:.1f} ms median vs "
                 f"{c['empty_ms']:.1f} ms empty: {c['ratio']:.2f}× | ≤ {TARGETS['stored_chats_ratio']}×: "
                 f"{met['stored_chats_met']} |"]
        t = res["targets"]
        if "speedup_at_8" in t:
            text += ["", f"8 clients vs 1: {t['speedup_at_8']:.2f}× the tokens/s (target ≥ "
                     f"{TARGETS['speedup_at_8']:.0f}×: {'met' if t['speedup_met'] else 'missed'}); p99 TPOT "
                     f"{t['p99_tpot_ratio_at_8']:.2f}× (target ≤ {TARGETS['p99_tpot_ratio_at_8']:.0f}×: "
                     f"{'met' if t['p99_tpot_met'] else 'missed'})."]
        text.append("")
    text += [run["llama_cpp"], "", "![tokens/s and p99 TPOT per level](serve.png)", ""]
    (out / "report.md").write_text("\n".join(text))


def plot(run: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in run["models"].items():
        lv = [x for x in res["levels"] if x["tpot_ms"]]
        a.plot([x["clients"] for x in lv], [x["tokens_per_s"] for x in lv], marker="o", label=name)
        b.plot([x["clients"] for x in lv], [x["tpot_ms"]["p99"] for x in lv], marker="o", label=name)
    a.set(title="tokens/s (all clients)", xlabel="concurrent chats")
    b.set(title="p99 time per output token (ms)", xlabel="concurrent chats")
    a.legend()
    fig.tight_layout()
    fig.savefig(out / "serve.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from dialogpt_onnx.runtime.cli import OneLineParser

    from .quality import BUNDLED
    from .random_checkpoint import make_random_checkpoint

    ap = OneLineParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="*", help="checkpoint dirs (default: DialoGPT-small random + bundled)")
    ap.add_argument("--clients", default=None, help="concurrency levels, comma-separated (default 1,4,8,16)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/serve")
    a = ap.parse_args(argv)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    p = dict(QUICK if a.quick else FULL)
    if a.clients:
        try:
            p["clients"] = sorted({int(x) for x in a.clients.split(",")})
            assert min(p["clients"]) >= 1
        except (ValueError, AssertionError):
            print(f"error: --clients {a.clients!r}: give comma-separated integers >= 1, e.g. 1,4,8,16",
                  file=sys.stderr)
            return 2
    out = report_dir(ap, a.out)
    sources = [(Path(c).name, Path(c)) for c in a.checkpoints] or [("small-random", None), ("bundled", BUNDLED)]
    for _, src in sources:
        if src is not None and not (src / "config.json").is_file():
            print(f"error: {src} has no config.json: give a checkpoint dir (dialogpt-onnx export reads it)",
                  file=sys.stderr)
            return 2
    run = {"quick": a.quick, "threads": a.threads, "params": p, "machine": machine_info(), "models": {},
           "llama_cpp": "llama.cpp's server: not run (no llama.cpp server is installed here)."}
    for label, src in sources:
        if src is None:
            src = out / "work" / "checkpoints" / label
            if not (src / "config.json").is_file():
                make_random_checkpoint("small", src)
        model_dir = export_int8(src, out / "work" / f"{label}-int8", a.threads)
        run["models"][label] = bench_model(model_dir, p, a.threads)
    write_results(out, run, write_report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
