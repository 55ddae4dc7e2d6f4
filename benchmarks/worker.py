"""One engine per process: loads once, then times greedy generations on request. A process per engine
keeps their memory apart (peak RSS per engine) and lets the parent interleave them per repeat."""

from __future__ import annotations

import os
import resource
import time
import traceback
from pathlib import Path


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
    from .engines import all_engines

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
        _, ids, n = msg
        try:
            t = time.perf_counter()
            out, first = engine.generate(list(ids), n)
            end = time.perf_counter()
            conn.send({"seconds": end - t, "first_s": first - t, "decode_s": end - first, "ids": out})
        except Exception as e:  # noqa: BLE001
            conn.send({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})
