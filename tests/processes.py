"""Helpers for tests that drive servers and other processes: a free loopback port (tests target 127.0.0.1
only), the HTTP app served on one from a thread, and the event "the process is waiting for input"."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def wait_until_healthy(port: int, timeout: float = 60) -> None:
    """Until a server started on `port` answers /health with 200 (or `timeout` seconds pass)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# read, and the waits readline's input() makes before it reads: poll, select, pselect6, ppoll (x86_64), then
# read, pselect6, ppoll (aarch64)
WAITING_FOR_INPUT = {"0", "7", "23", "270", "271"} | {"63", "72", "73"}


@contextmanager
def live_server(model, app_options: dict | None = None, config_options: dict | None = None,
                **engine_options) -> Iterator[tuple]:
    """serve.http's app over its own engine, on a free loopback port (uvicorn in a thread): (engine, base
    url). app_options are ServeConfig settings for create_app, config_options go to uvicorn.Config, the
    rest to the Engine."""
    import uvicorn

    from dialogpt_onnx.serve.config import ServeConfig
    from dialogpt_onnx.serve.engine import Engine
    from dialogpt_onnx.serve.http import create_app

    engine = Engine(model, **engine_options)
    port = free_port()
    app = create_app(engine, "tiny", ServeConfig(access_log=False, **(app_options or {})))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                        **(config_options or {})))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield engine, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(timeout=30)
        engine.close()


def wait_until_reading(pid: int, timeout: float = 30) -> bool:
    """True once `pid` waits for input (in read(), or in the poll / select readline makes first): a signal
    sent now interrupts that wait. Output seen is not that event: a SIGINT between a prompt's write and the
    read waits for input."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/syscall").read_text().split()[0] in WAITING_FOR_INPUT:
                return True
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    return False


def one_line(proc, code: int, phrase: str) -> None:
    """A CLI failed as users should see it: exit `code`, one line on stderr naming the problem, no trace."""
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    err = err.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert phrase in err, err


# A script: load a model dir (argv[1]) and print one score's log-probabilities and the model file the session
# was built from (the export's, or the weight cache's entry).
LOAD_AND_SCORE = """
import json, sys
from dialogpt_onnx import runtime
model = runtime.load(sys.argv[1])
s = model.score("Hello there, how are you?", "I am fine, thanks. And you?")
print(json.dumps({"logprobs": s.token_logprobs, "file": str(model.graph.model_file)}))
"""
