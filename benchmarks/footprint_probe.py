"""One footprint measurement in a fresh process (run by benchmarks.footprint; stdlib only at the top, so that
the import time is the engine's own):

    python -m benchmarks.footprint_probe ENGINE ARTIFACT LEVER THREADS [--hold]

Prints one JSON line: import, load and first-token seconds (a 64-token prompt), memory after load, after a
32-token reply and after a second chat of the same length, and the peak. With --hold it then waits for a line
on stdin before exiting, so that several probes can be alive at once (memory shared between processes).
"""

from __future__ import annotations

import json
import sys
import time

START = time.perf_counter()
PROMPT = list(range(1000, 1064))  # 64 ids every engine reads the same way
REPLY = 32
HELD: list = []  # the engine's objects, alive until the probe exits (--hold measures them in place)


def memory() -> dict[str, float]:
    """MB: RSS (anonymous + file-backed), its two parts, the peak, and PSS (shared pages split among the
    processes mapping them: what N processes really cost together)."""
    out: dict[str, float] = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(line.split()[1]) / 1024
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def ours(artifact: str, lever: str, threads: int) -> dict:
    from dialogpt_onnx import runtime

    t_import = time.perf_counter() - START
    if lever == "no-prepacking":
        _session_lever()
    t = time.perf_counter()
    model = runtime.load(artifact, threads=threads, verify=lever != "no-verify",
                         optimization="basic" if lever == "basic" else None)
    load = time.perf_counter() - t
    if lever == "four-models":  # three more models of the same export in this process
        more = [runtime.load(artifact, threads=threads) for _ in range(3)]
        assert all(m.graph.ort_session is model.graph.ort_session for m in more)
        HELD.extend(more)
    after_load = memory()
    t = time.perf_counter()
    model.generate(PROMPT, max_new_tokens=1, min_new_tokens=1)
    ttft = time.perf_counter() - t
    chat = model.graph.new_cache()  # an app's chat: a cache of its own, kept
    chat.reset(1, reserve=len(PROMPT) + REPLY)
    from dialogpt_onnx.runtime.generate import generate_ids

    opts = model.options(max_new_tokens=REPLY, min_new_tokens=REPLY)
    list(generate_ids(chat, [PROMPT], opts, model.eos, stop_at_eos=False, keep_cache=True))
    after_reply = memory()
    second = model.graph.new_cache()
    second.reset(1, reserve=len(PROMPT) + REPLY)
    list(generate_ids(second, [PROMPT], opts, model.eos, stop_at_eos=False, keep_cache=True))
    HELD.extend([model, chat, second])
    return {"import_s": t_import, "load_s": load, "ttft_s": ttft, "after_load": after_load,
            "after_reply": after_reply, "after_second_chat": memory()}


def _session_lever() -> None:
    """A session setting the runtime does not take (a row of the lever table): the session is built here."""
    from pathlib import Path

    import onnxruntime as ort

    from dialogpt_onnx.runtime import ort_graph as ort_session

    def patched(path: Path, threads: int | None, optimization: str = "all", cache_key: str | None = None,
                verify: bool = False, batched: bool = False) -> ort_session.Built:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")
        if batched:  # as the loader does on onnxruntime >= 1.32 (runtime.batched_graph)
            edited = ort_session.with_query_seqlens(path.read_bytes())
            if edited is not None:
                return ort_session.Built(ort.InferenceSession(edited, so, providers=["CPUExecutionProvider"]), path)
        return ort_session.Built(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]), path)

    ort_session.make_session = patched


def llama(artifact: str, lever: str, threads: int) -> dict:
    import llama_cpp
    import numpy as np

    t_import = time.perf_counter() - START
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=artifact, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    load = time.perf_counter() - t
    after_load = memory()
    t = time.perf_counter()
    llm.reset()
    llm.eval(PROMPT)
    ttft = time.perf_counter() - t
    vocab = llm.n_vocab()
    for _ in range(REPLY):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
        llm.eval([int(np.argmax(logits))])
    after_reply = memory()
    # a second chat needs a second context (its own n_ctx KV): llama-cpp-python builds it with a second Llama
    # over the same file, which llama.cpp maps once more
    second = llama_cpp.Llama(model_path=artifact, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    second.eval(PROMPT)
    HELD.extend([llm, second])
    return {"import_s": t_import, "load_s": load, "ttft_s": ttft, "after_load": after_load,
            "after_reply": after_reply, "after_second_chat": memory()}


def main() -> None:
    engine, artifact, lever, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    result = (ours if engine == "ours" else llama)(artifact, lever, threads)
    print(json.dumps(result), flush=True)
    if "--hold" in sys.argv:
        sys.stdin.readline()


if __name__ == "__main__":
    main()
