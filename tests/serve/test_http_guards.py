"""What the server guards: no client reads another's chat through the cache, API keys, bodies, Host."""

from __future__ import annotations

import json

import httpx
import pytest
from processes import live_server

from dialogpt_onnx import runtime
from dialogpt_onnx.serve.config import ServeConfig
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app


def test_a_client_cannot_guess_anothers_chat_through_the_cache(exported):
    """The attack on a shared cache, over HTTP: after a victim's chat, guesses of it from another salt or
    none reuse nothing (the /health counters do not move), while the victim's next turn reuses its KV."""
    model = runtime.load(exported("int8"))
    with live_server(model, max_batch=2) as (engine, url):
        def ask(content: str, salt: str | None) -> dict:
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
            body |= {"cache_salt": salt} if salt else {}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        def reused() -> int:
            return engine.prefix_cache.reused_tokens

        secret = "My bank PIN is 7305 and my name is Carol Jones"
        reply = ask(secret, "victim")["choices"][0]["message"]["content"] or "ok"
        for guess, salt in [("My bank PIN is 7305", "attacker"), ("My bank PIN is 7305", None),
                            (secret, "another attacker"), (secret, None)]:
            before = reused()
            ask(guess, salt)
            assert reused() == before, (guess, salt)
        before = reused()
        body = {"messages": [{"role": "user", "content": secret}, {"role": "assistant", "content": reply},
                             {"role": "user", "content": "Is it safe?"}], "max_tokens": 2, "cache_salt": "victim"}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        assert reused() - before >= len(model.encode_turn(secret))


def test_api_keys_guard_the_api_and_separate_tenants(exported, tmp_path):
    from starlette.testclient import TestClient

    from dialogpt_onnx.serve.auth import read_keys

    a, b = "a" * 24, "b" * 24
    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=2)
    try:
        client = TestClient(create_app(engine, "tiny", ServeConfig(api_keys=(a, b))))
        chat = {"messages": [{"role": "user", "content": "My bank PIN is 7305"}], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer " + "c" * 24}, {"Authorization": a}):
            r = client.post("/v1/chat/completions", json=chat, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
            assert client.get("/v1/models", headers=headers).status_code == 401
        assert client.get("/").status_code == 200  # the page asks for the key itself
        open_health = client.get("/health").json()
        assert open_health["status"] == "ok" and "prefix_cache" not in open_health  # no counters without a key
        as_a, as_b = {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}
        assert client.post("/v1/chat/completions", json=chat, headers=as_a).status_code == 200
        reused = client.get("/health", headers=as_a).json()["prefix_cache"]["reused_tokens"]
        assert client.post("/v1/chat/completions", json=chat, headers=as_b).status_code == 200  # another tenant
        assert client.get("/health", headers=as_b).json()["prefix_cache"]["reused_tokens"] == reused
        assert client.post("/v1/chat/completions", json=chat, headers=as_a).status_code == 200  # the same one
        assert client.get("/health", headers=as_a).json()["prefix_cache"]["reused_tokens"] > reused
        # each key sees its own counters only; the public, liveness only (the queue and the other keys'
        # counters were shown to any key holder)
        assert client.get("/health", headers=as_b).json() == {"status": "ok", "pid": client.get("/health").json()[
            "pid"], "prefix_cache": {"hits": 0, "reused_tokens": 0}}
        assert set(client.get("/health").json()) == {"status", "pid"}
    finally:
        engine.close()
    admin = "d" * 24
    engine = Engine(model, max_batch=2)
    try:
        client = TestClient(create_app(engine, "tiny", ServeConfig(api_keys=(a,), admin_keys=(admin,))))
        assert client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {admin}"}
                           ).status_code == 200  # an admin key is an API key too
        seen = client.get("/health", headers={"Authorization": f"Bearer {admin}"}).json()
        assert {"waiting", "steps", "prefix_cache", "tenant"} <= set(seen)  # the process-wide figures
        assert "waiting" not in client.get("/health", headers={"Authorization": f"Bearer {a}"}).json()
    finally:
        engine.close()
    keys = tmp_path / "keys"
    keys.write_text(f"# ours\n{a}\n\n{b}\n")
    assert read_keys(None, str(keys), None) == [a, b] and read_keys([a], None, b) == [a, b]
    with pytest.raises(runtime.UsageError, match="at least 16 characters"):
        read_keys(["short"], None, None)
    with pytest.raises(runtime.UsageError, match="cannot read --api-key-file"):
        read_keys(None, str(tmp_path / "missing"), None)


def test_oversized_and_non_json_bodies_are_refused_before_reading(exported):
    from starlette.testclient import TestClient

    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=1)
    try:
        client = TestClient(create_app(engine, "tiny", ServeConfig(max_body_bytes=4096)))
        url = "/v1/chat/completions"
        big = json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]}).encode()
        r = client.post(url, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b" " * 1000

        r = client.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        ok = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        # a cross-site form can POST text/plain without a preflight: only JSON bodies are read
        r = client.post(url, content=ok, headers={"content-type": "text/plain"})
        assert r.status_code == 415 and engine.steps == 0
        json_utf8 = {"content-type": "application/json; charset=utf-8"}
        assert client.post(url, content=ok, headers=json_utf8).status_code == 200
    finally:
        engine.close()


def test_only_allowed_host_headers_are_served(exported):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host; it gets 400."""
    from starlette.testclient import TestClient

    from dialogpt_onnx.serve.process import with_host_policy

    assert ServeConfig(host="127.0.0.1").host_allow_list() == ["127.0.0.1", "::1", "localhost"]
    assert ServeConfig(host="0.0.0.0", allowed_hosts=("chat.example.org",)).host_allow_list() == [
        "127.0.0.1", "::1", "chat.example.org", "localhost"]
    assert ServeConfig(host="0.0.0.0").host_allow_list() is None  # every interface, no name given: the CLI warns
    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=1)
    try:
        app = with_host_policy(create_app(engine, "tiny"), ServeConfig(host="127.0.0.1"))
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert client.get("/", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/", headers={"host": "[::1]:8000"}).status_code == 200  # IPv6, as `--host ::1` prints it
        assert client.get("/", headers={"host": "[::2]:8000"}).status_code == 400
        for path in ("/", "/v1/models", "/health"):
            assert client.get(path, headers={"host": "attacker.example:8000"}).status_code == 400
        steps = engine.steps
        r = client.post("/v1/chat/completions", json=chat, headers={"host": "attacker.example"})
        assert r.status_code == 400 and engine.steps == steps  # nothing ran for it
    finally:
        engine.close()
