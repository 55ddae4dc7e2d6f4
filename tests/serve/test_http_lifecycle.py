"""The server as a process: overload, health, clients that leave, SIGTERM, chats kept across turns and
restarts, and its CLI's one-line refusals."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from checkpoints import ROOT
from openai import OpenAI
from processes import free_port, live_server, wait_until_healthy
from serving import chat_replies

from dialogpt_onnx import runtime
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app


def test_full_queue_is_429_with_retry_after(exported):
    from starlette.testclient import TestClient

    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=1, max_queue=1)
    try:
        busy = engine.submit("hi", max_new_tokens=400, min_new_tokens=400)
        next(busy.tokens())
        engine.submit("hi", max_new_tokens=400)  # waits: the queue is now full
        r = TestClient(create_app(engine, "tiny")).post("/v1/chat/completions",
                                                        json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        busy.cancel()
    finally:
        engine.close()


def test_health_is_503_once_the_engine_died_or_closed(exported):
    from starlette.testclient import TestClient

    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=1)
    client = TestClient(create_app(engine, "tiny"))
    try:
        assert client.get("/health").status_code == 200
        real = engine._step

        def crash(*args, **kwargs):
            raise RuntimeError("simulated onnxruntime failure")

        engine._step = crash  # the worker's next step fails, as a broken graph or an out-of-memory would
        req = engine.submit("hi", max_new_tokens=4)
        with pytest.raises(RuntimeError, match="simulated"):
            list(req.tokens())
        engine._thread.join(timeout=30)
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error" and "simulated" in r.json()["message"]
        engine._step = real
    finally:
        engine.close()
    closed = Engine(model, max_batch=1)
    closed.close()
    assert TestClient(create_app(closed, "tiny")).get("/health").json()["message"] == "the engine is closed"


def test_a_client_that_disconnects_frees_its_row(exported):
    """One row only: if the abandoned stream kept it, the next request would wait for 1000 tokens."""
    model = runtime.load(exported("int8"))
    with live_server(model, max_batch=1, max_queue=4) as (engine, base):
        url = f"{base}/v1/chat/completions"
        long = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "min_tokens": 1000,
                "stream": True}
        with httpx.stream("POST", url, json=long, timeout=60) as r:
            next(r.iter_lines())  # the stream has started; now go away
        steps_then = engine.steps
        start = time.monotonic()
        r = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and time.monotonic() - start < 20
        # the abandoned reply (1000 tokens asked, no end of turn before) stopped at the disconnect
        assert engine.steps - steps_then < 200


def test_a_non_streamed_request_whose_client_left_stops_computing(exported):
    """Each step paced at 10 ms, so the 1000-token reply would take 10 s; its client gives up after 1 s."""
    model = runtime.load(exported("int8"))
    with live_server(model, max_batch=1) as (engine, base):
        real_step = engine._step

        def paced(*args, **kwargs):
            time.sleep(0.01)
            return real_step(*args, **kwargs)

        engine._step = paced
        steps_then = engine.steps
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "min_tokens": 1000}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json=body, timeout=1)
        deadline, last = time.monotonic() + 30, -1
        while engine.steps != last and time.monotonic() < deadline:  # until the engine is idle
            last = engine.steps
            time.sleep(1)
        assert engine.steps == last and engine.steps - steps_then < 500  # cancelled, not run to 1000


def test_sigterm_finishes_in_flight_requests_and_exits(exported, tmp_path):
    """... and saves its prefix cache with the reply just finished, when asked to keep it."""
    import signal
    import subprocess
    import sys

    port = free_port()
    cache_file = tmp_path / "chats.npz"
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(exported("int8")), "--port", str(port),
                             "--prefix-cache-file", str(cache_file)],
                            cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until_healthy(port)
        pieces: list[str] = []
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "min_tokens": 60, "stream": True,
                "cache_salt": "me"}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)  # mid-reply
            pieces = [ln for ln in lines if ln.startswith("data: ")]
        assert pieces[-1] == "data: [DONE]"  # the in-flight reply was finished, not cut
        assert json.loads(pieces[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
        # then it ends as a SIGTERM'd process does (128 + 15 in a shell, as the project's other CLIs)
        assert proc.wait(timeout=60) == -signal.SIGTERM
        assert "Traceback" not in proc.stderr.read()
        assert "prefix cache: " in proc.stdout.read()
        with np.load(cache_file) as z:  # the finished reply's row: prompt + 60 tokens but the last (never fed)
            assert len(z["tokens"]) == len(runtime.load(exported("int8")).encode_turn("hi")) + 59
    finally:
        proc.kill()


def test_a_chats_next_turn_reuses_its_kv(exported):
    model = runtime.load(exported("fp32"))
    with live_server(model, max_batch=2) as (engine, url):
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        messages = [{"role": "user", "content": "Do you like movies?"}]
        mine = {"cache_salt": "one user's chat", "seed": 2}  # without a salt, no request reuses another's KV
        for turn in ("Which ones?", "Why?"):
            r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, extra_body=mine)
            messages += [{"role": "assistant", "content": r.choices[0].message.content},
                         {"role": "user", "content": turn}]
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, extra_body=mine)
        want = chat_replies(model, ["Do you like movies?", "Which ones?", "Why?"],
                            **runtime.chat_options(max_new_tokens=6, seed=2))
        assert [m["content"] for m in messages[1::2]] + [r.choices[0].message.content] == [w.text for w in want]
        assert engine.prefix_cache.hits == 2  # turns 2 and 3 started from the previous turn's KV, all of it:
        # a turn's row holds its prompt and reply but the reply's last token (never fed); the next prompt
        # matches all of it, even where the reply's text re-encodes to other tokens (random weights here)
        assert engine.prefix_cache.reused_tokens == sum(len(w.prompt) + len(w.ids) - 1 for w in want[:2])


def test_a_persisted_prefix_cache_continues_chats_after_a_restart(exported, tmp_path):
    """--prefix-cache-file: a chat's next turn after a restart reuses all of its KV and replies as the
    uninterrupted chat does (the replies' ids are kept too: random weights re-encode them differently); the
    file keeps tenants apart, holds no salt, is its owner's only, and is never another model's or a stranger's."""
    import os
    import stat
    import zipfile

    from dialogpt_onnx.runtime.errors import UsageError

    model = runtime.load(exported("fp32"))
    file = tmp_path / "chats.npz"
    mine = {"cache_salt": "carol's chat", "seed": 2}
    messages = [{"role": "user", "content": "Do you like movies?"}]

    def turn(url: str, extra: dict) -> str:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, extra_body=extra)
        return r.choices[0].message.content

    with live_server(model, max_batch=2, prefix_cache_file=file) as (engine, url):
        assert "does not exist yet" in engine.prefix_cache_status
        messages += [{"role": "assistant", "content": turn(url, mine)}, {"role": "user", "content": "Which ones?"}]
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert b"carol" not in file.read_bytes()
    want = chat_replies(model, ["Do you like movies?", "Which ones?"], **runtime.chat_options(max_new_tokens=6, seed=2))
    assert want[0].text == messages[1]["content"]
    with live_server(model, max_batch=2, prefix_cache_file=file) as (engine, url):
        assert "restored 1 of 1 chats" in engine.prefix_cache_status
        # the reply's ids came back with it (a reply whose text re-encodes differently still matches its KV)
        assert engine.replies.get(engine.cache_namespace("/" + mine["cache_salt"]), want[0].text) == want[0].ids
        assert turn(url, {"cache_salt": "mallory", "seed": 2}) is not None
        assert engine.prefix_cache.hits == 0  # another tenant's guess reuses nothing
        assert turn(url, mine) == want[1].text
        assert engine.prefix_cache.hits == 1
        assert engine.prefix_cache.reused_tokens == len(want[0].prompt) + len(want[0].ids) - 1

    damaged = tmp_path / "damaged.npz"
    data = bytearray(file.read_bytes())
    data[zipfile.ZipFile(file).getinfo("kv_0.npy").header_offset + 200] ^= 0xFF  # a bit of the KV flipped
    damaged.write_bytes(bytes(data))
    engine = Engine(model, prefix_cache_file=damaged)
    assert "damaged" in engine.prefix_cache_status and len(engine.prefix_cache) == 0
    engine.close()
    other = runtime.load(exported("int8"))  # another model: the file is set aside, then replaced
    engine = Engine(other, prefix_cache_file=file)
    assert "another model" in engine.prefix_cache_status and len(engine.prefix_cache) == 0
    engine.close()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UsageError, match="is not a prefix cache this project saved"):
        Engine(model, prefix_cache_file=notes)
    assert notes.read_text() == "mine"


def test_serve_cli_refuses_a_bad_port_or_host_in_one_line(exported, tmp_path):
    import socket
    import subprocess
    import sys

    from processes import one_line

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dialogpt_onnx.serve", str(exported("int8")), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    one_line(serve("--port", "70000"), 2, "--port: must be a TCP port, 1 to 65535, got 70000")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line(serve("--port", str(port)), 2, f"cannot listen on 127.0.0.1:{port} (Address already in use)")
    one_line(serve("--host", "999.1.1.1"), 2, "--host 999.1.1.1: not an address of this machine")
    one_line(serve("--prefix-cache-file", "chats.npz", "--ray"), 2, "--prefix-cache-file keeps one process's")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    one_line(serve("--prefix-cache-file", str(notes), "--port", str(free_port())), 2,
             "is not a prefix cache this project saved")
    assert notes.read_text() == "mine"


def test_serve_on_ipv6_loopback_answers_the_url_it_prints(exported):
    """`--host ::1`: the banner's URL (`http://[::1]:PORT/`) is served, Host header and all (it was 400)."""
    import socket
    import subprocess
    import sys

    with socket.create_server(("::1", 0), family=socket.AF_INET6) as s:
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(exported("int8")), "--host", "::1",
                             "--port", str(port), "--no-access-log"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        url = f"http://[::1]:{port}"
        assert f"on {url}:" in banner, (banner, proc.stderr.read() if proc.poll() is not None else "")
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                            "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant", r.text
        assert httpx.get(f"{url}/", headers={"Host": "rebound.example"}, timeout=30).status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_prefix_cache_file_someone_else_could_write_is_refused_at_start(exported, tmp_path):
    """--prefix-cache-file: a file others can write or another user owns is refused at start (it was loaded
    without a word), so is a directory that does not exist (it was found only at shutdown, losing every
    cached chat), and planted reply ids that are not token ids set the file aside (they were a 500)."""
    import os

    from dialogpt_onnx.runtime.archive import digest
    from dialogpt_onnx.runtime.errors import UsageError

    model = runtime.load(exported("int8"))
    file = tmp_path / "chats.npz"
    engine = Engine(model, prefix_cache_file=file)
    assert list(engine.submit("Hello there", tenant="t", max_new_tokens=3).tokens())
    engine.close()
    assert file.is_file()
    file.chmod(0o666)
    with pytest.raises(UsageError, match="writable by another user"):
        Engine(model, prefix_cache_file=file)
    file.chmod(0o600)
    os.chown(file, 12345, 12345)
    with pytest.raises(UsageError, match="owned by"):
        Engine(model, prefix_cache_file=file)
    os.chown(file, os.getuid(), os.getgid())
    with pytest.raises(UsageError, match="does not exist"):
        Engine(model, prefix_cache_file=tmp_path / "nope" / "chats.npz")
    with np.load(file) as z:
        meta, arrays = json.loads(str(z["meta"])), {n: z[n] for n in z.files if n != "meta"}
    meta["replies"] = [[engine.cache_namespace("t"), "Hello", ["x", 1.5]]]
    kv = [arrays[f"kv_{i}"] for i in range(sum(n.startswith("kv_") for n in arrays))]
    said = np.frombuffer(json.dumps(meta["replies"]).encode(), np.uint8)
    meta["sha256"] = digest(arrays["tokens"], arrays["lengths"], *kv, said)
    np.savez(file, meta=np.array(json.dumps(meta)), **arrays)
    file.chmod(0o600)
    planted = Engine(model, prefix_cache_file=file)
    try:
        assert "damaged" in planted.prefix_cache_status and len(planted.prefix_cache) == 0
    finally:
        planted.close()


@pytest.mark.parametrize("second_signal", [False, True])
def test_replies_cut_by_shutdown_end_the_way_a_client_can_read(exported, second_signal):
    """When --shutdown-timeout runs out (or a second signal comes), a non-streamed reply gets a 503 JSON error
    and a stream an error event and finish_reason "abort" before [DONE] (they were a 500 with a
    CancelledError trace, and streams cut with no word or ended without a finish_reason)."""
    import signal
    import subprocess
    import sys
    import threading

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(exported("fp32")), "--port", str(port),
                             "--shutdown-timeout", "1", "--no-access-log"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    long = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "min_tokens": 1000}
    try:
        wait_until_healthy(port)
        whole: list[httpx.Response] = []
        t = threading.Thread(target=lambda: whole.append(httpx.post(url, json=long, timeout=60)))
        t.start()
        with httpx.stream("POST", url, json={**long, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            if second_signal:
                time.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
            events = [ln[6:] for ln in lines if ln.startswith("data: ")]
        t.join(timeout=60)
        assert events[-1] == "[DONE]", events[-3:]
        assert "error" in json.loads(events[-3]) and json.loads(events[-2])["choices"][0]["finish_reason"] == "abort"
        assert whole and whole[0].status_code == 503 and whole[0].json()["error"]["type"] == "server_error"
        proc.wait(timeout=60)
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
