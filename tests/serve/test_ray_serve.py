"""Scale-out: the server's replicas on a local single-node Ray cluster, behind Ray's HTTP proxy, answer as
the model does alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from checkpoints import ROOT
from openai import OpenAI
from processes import free_port

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.text import encode_dialogue

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

QUESTIONS = ["Do you like movies?", "Who is your favorite band?", "I like jazz more.", "What about football?",
             "Have you read any good books?", "Where do you live?"]


def test_two_ray_serve_replicas_answer_like_the_model_alone(exported):
    model_dir = exported("int8")
    model = runtime.load(model_dir)
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    key = "k" * 24
    proc = subprocess.Popen([sys.executable, "-m", "dialogpt_onnx.serve", str(model_dir), "--ray", "--replicas", "2",
                             "--port", str(port), "--api-key", key], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Ray Serve did not come up in 240 s"
            time.sleep(0.5)
        # two processes answer behind the one proxy
        pids = {httpx.get(f"{url}/health", timeout=10).json()["pid"] for _ in range(40)}
        assert len(pids) == 2 and proc.pid not in pids
        client = OpenAI(base_url=f"{url}/v1", api_key=key)

        def ask(q: str) -> str:
            r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": q}], max_tokens=10,
                                               seed=1)
            return r.choices[0].message.content

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(ask, QUESTIONS))
        want = [model.generate(encode_dialogue(model.tokenizer, [q], model.eos),
                               **runtime.chat_options(max_new_tokens=10, seed=1)).text for q in QUESTIONS]
        assert got == want
        # the replicas serve only this machine's names: a site rebinding its name to 127.0.0.1 reaches nothing
        assert httpx.get(f"{url}/health", headers={"Host": "rebound.example"}, timeout=10).status_code == 400
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                                max_tokens=10, stream=True, seed=1)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == want[0]
        # Ray's proxy answers /-/routes (the cluster's applications) only to a key holder; /-/healthz is liveness
        assert httpx.get(f"{url}/-/routes", timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * 24}
        assert httpx.get(f"{url}/-/routes", headers=wrong, timeout=10).status_code == 401
        routes = httpx.get(f"{url}/-/routes", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert routes.status_code == 200 and routes.json() == {"/": "dialogpt"}
        assert httpx.get(f"{url}/-/healthz", timeout=10).status_code == 200
        # Ray's own ports listen on every interface (Ray 2.60 has no bind option): joining the cluster needs the
        # token only the server and its children hold, not the one in ~/.ray/auth_token (Ray writes it 0644, so
        # any local user can read it)
        listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
        gcs = [ln.split()[3].rsplit(":", 1)[1] for ln in listeners if '"gcs_server"' in ln]
        assert gcs, listeners
        intruder = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        shared_token = Path.home() / ".ray" / "auth_token"
        if shared_token.exists():
            intruder.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=shared_token.read_text().strip())
        join = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1]); "
                               "print(ray.get(ray.remote(lambda: 'ran').remote()))", f"127.0.0.1:{gcs[0]}"],
                              env=intruder, capture_output=True, text=True, timeout=120)
        assert join.returncode != 0 and "ran" not in join.stdout, join.stdout[-500:]
        proc.send_signal(signal.SIGTERM)  # replicas and the local cluster are shut down, then it exits
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()


def test_ray_options_without_ray_are_refused(exported):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dialogpt_onnx.serve", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    r = serve(str(exported("int8")), "--replicas", "2")
    assert r.returncode == 2 and r.stderr.strip() == "error: --replicas and --ray-address run on Ray Serve: add --ray"
    r = serve("/nonexistent/model", "--ray")
    assert r.returncode == 2 and "/nonexistent/model" in r.stderr and "Traceback" not in r.stderr
