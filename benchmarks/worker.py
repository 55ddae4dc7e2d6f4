"""One engine per process: loads once, then times greedy generations on request. A process per engine
keeps their memory apart (peak RSS per engine) and lets the parent interleave them per repeat."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .engines import Engine

# Pause after each timed call: thread pools that spin-wait after work (onnxruntime, llama.cpp) must go
# idle before the next engine runs, or they steal its cores.
SETTLE_S = 0.05


def peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak
    (the suite's parent converts models and is large)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_main(conn, engine_name: str, artifact: str, threads: int) -> None:  # noqa: ANN001 - a Pipe end
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .registry import all_engines

    try:
        engine = next(e for e in all_engines() if e.name == engine_name)
        t = time.perf_counter()
        engine.load(Path(artifact), threads)
        conn.send({"load_s": time.perf_counter() - t})
    except Exception as e:  # noqa: BLE001 - reported by the parent as this engine's failure
        conn.send({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            conn.send({"peak_rss_mb": peak_rss_mb()})
            return
        if msg[0] == "logits":  # teacher forcing: the distributions that predict each reply token
            _, context, reply = msg
            try:
                conn.send({"logits": np.asarray(engine.logits(list(context), list(reply)), dtype=np.float32)})
            except Exception as e:  # noqa: BLE001
                conn.send({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})
            continue
        _, ids, n = msg
        try:
            t = time.perf_counter()
            out, first = engine.generate(list(ids), n)
            end = time.perf_counter()
            conn.send({"seconds": end - t, "first_s": first - t, "decode_s": end - first, "ids": out})
        except Exception as e:  # noqa: BLE001
            conn.send({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})


class Worker:
    """The parent's side: starts an engine's process and waits until it has loaded (`hello`)."""

    def __init__(self, engine: Engine, artifact: Path, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, engine.name, str(artifact), threads), daemon=True)
        self.proc.start()
        self.hello = self.conn.recv()

    def call(self, ids: list[int], n: int) -> dict:
        self.conn.send(("time", ids, n))
        res = self.conn.recv()
        time.sleep(SETTLE_S)
        return res

    def logits(self, context: list[int], reply: list[int]) -> dict:
        """{"logits": [len(reply), vocab] float32} (see Engine.logits), or {"error": ...}."""
        self.conn.send(("logits", context, reply))
        return self.conn.recv()

    def stop(self) -> float:
        self.conn.send(("stop",))
        rss = self.conn.recv().get("peak_rss_mb", float("nan"))
        self.proc.join(timeout=30)
        return rss
