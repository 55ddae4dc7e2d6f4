"""What a client cannot make the server do: hold a connection by trickling headers or a body or by saying
nothing, keep the process alive after SIGTERM; and what the server tells operators: readiness, metrics."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from checkpoints import ROOT
from processes import free_port, live_server

from dialogpt_onnx import runtime
from dialogpt_onnx.serve.connections import timed_protocol

KEY = "k" * 20


@contextmanager
def timed_server(model, header=1.0, body=1.0, idle=1, api_keys=None):
    """The app with short deadlines: (engine, port)."""
    with live_server(model, app_options={"body_timeout": body, "api_keys": tuple(api_keys or ())},
                     config_options={"http": timed_protocol(header), "timeout_keep_alive": idle},
                     max_batch=2, max_queue=2) as (engine, url):
        yield engine, int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def model(exported):
    return runtime.load(exported("int8"))


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes | None = None) -> bool:
    """True when the server closes `sock` within `seconds`, while we send `trickle` every 0.25 s."""
    end = time.monotonic() + seconds
    sock.settimeout(0.25)
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionError:
            return True
        if trickle:
            try:
                sock.sendall(trickle)
            except OSError:
                return True
    return False


def test_slow_or_silent_clients_are_disconnected(model):
    with timed_server(model, header=1.0) as (_, port):
        silent = socket.create_connection(("127.0.0.1", port))
        assert _closed_within(silent, 6)  # sent nothing
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert _closed_within(slow, 6, trickle=b"X-Pad: 1\r\n")  # one header line every 0.25 s, never done
        kept = socket.create_connection(("127.0.0.1", port))  # a keep-alive client's next request, trickled
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        kept.settimeout(5)
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\n")
        assert _closed_within(kept, 6, trickle=b"X-Pad: 1\r\n")
        fine = httpx.get(f"http://127.0.0.1:{port}/health")  # a client that sends its request at once is served
        assert fine.status_code == 200


def test_a_trickled_body_gets_408(model):
    with timed_server(model, header=5.0, body=1.0) as (engine, port):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200\r\n\r\n{")
        s.settimeout(0.25)
        got, end = b"", time.monotonic() + 8
        while b"\r\n\r\n" not in got and time.monotonic() < end:
            try:
                got += s.recv(65536)
            except TimeoutError:
                s.sendall(b" ")  # a byte every 0.25 s: 200 would take 50 s
        assert got.startswith(b"HTTP/1.1 408"), got[:80]
        assert engine.stats()["waiting"] == 0 and engine.steps == 0  # nothing was queued for it


def test_ready_and_health_tell_the_truth(model):
    with timed_server(model) as (engine, port):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/ready").json() == {"status": "ready"}
        engine.close()
        r = httpx.get(f"{base}/ready")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert httpx.get(f"{base}/health").status_code == 503


def test_metrics_behind_the_key_count_what_happened(model):
    with timed_server(model, api_keys=[KEY]) as (_, port):
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{base}/metrics").status_code == 401
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "min_tokens": 5}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth).status_code == 200
        with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, headers=auth) as r:
            assert r.status_code == 200 and list(r.iter_lines())[-2] == "data: [DONE]"
        assert httpx.post(f"{base}/v1/chat/completions", json={"messages": []}, headers=auth).status_code == 400
        text = httpx.get(f"{base}/metrics", headers=auth).text
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line and not line.startswith("#")}
        assert values['dialogpt_responses_total{status="200"}'] == 2
        assert values['dialogpt_responses_total{status="400"}'] == 1
        assert values["dialogpt_generated_tokens_total"] == 10
        assert values["dialogpt_time_to_first_token_seconds_count"] == 2
        assert values["dialogpt_time_per_output_token_seconds_count"] == 2
        assert values["dialogpt_queue_depth"] == 0 and values["dialogpt_engine_alive"] == 1


def _start(model_dir, *flags):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(model_dir), "--port", str(port), *flags],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.stderr.read())


def _mid_upload(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"messages\": ")
    time.sleep(0.3)
    return s


def test_sigterm_with_a_client_mid_upload_exits_by_the_deadline(exported):
    proc, port = _start(exported("int8"), "--shutdown-timeout", "2", "--body-timeout", "120")
    try:
        s = _mid_upload(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert time.monotonic() - t0 < 20
        s.close()
    finally:
        proc.kill()


def test_a_second_signal_stops_waiting(exported):
    proc, port = _start(exported("int8"), "--shutdown-timeout", "120", "--body-timeout", "120")
    try:
        s = _mid_upload(port)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None  # the first waits for the upload (up to --shutdown-timeout)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        s.close()
    finally:
        proc.kill()


def test_banner_access_log_and_ctrl_c_exits_130(exported):
    proc, port = _start(exported("int8"), "--model-name", "tiny-chat")
    try:
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # as the project's other CLIs: interrupted
        assert "Traceback" not in proc.stderr.read()
        lines = proc.stdout.read().splitlines()
        assert lines[0].startswith("serving tiny-chat (int8, ") and f"http://127.0.0.1:{port}/" in lines[0]
        assert "API keys off" in lines[0]
        assert [ln for ln in lines if '"POST /v1/chat/completions" 200 ' in ln and ln.endswith(" ms")]
        assert not [ln for ln in lines if "/ready" in ln]  # probes are not logged
    finally:
        proc.kill()
