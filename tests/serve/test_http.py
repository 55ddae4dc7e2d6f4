"""The OpenAI-compatible server: the official client works against it unchanged; bad input and overload
get OpenAI-style errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from checkpoints import ROOT
from openai import OpenAI
from processes import free_port, live_server

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.text import encode_dialogue
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app

MESSAGES = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Do you like movies?"},
            {"role": "assistant", "content": "Yes, I love them."}, {"role": "user", "content": "Which ones?"}]


@dataclass
class Turn:
    prompt: list[int]
    ids: list[int]
    text: str


def chat_replies(model, user_turns: list[str], **options) -> list[Turn]:
    """A chat as a ChatSession keeps it: the history holds the ids the model generated."""
    history: list[int] = []
    out = []
    for u in user_turns:
        history += model.encode_turn(u)
        g = model.generate(history, **options)
        out.append(Turn(list(history), g.ids, g.text))
        history += g.ids if g.ids[-1:] == [model.eos] else g.ids + [model.eos]
    return out


@pytest.fixture(scope="module")
def server(exported):
    model = runtime.load(exported("int8"))
    with live_server(model, max_batch=4, max_queue=8) as (_, url):
        yield model, url


def test_openai_client_chat_and_stream(server):
    model, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompt = encode_dialogue(model.tokenizer, [m["content"] for m in MESSAGES[1:]], model.eos)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, seed=7)
    solo = model.generate(prompt, **runtime.chat_options(max_new_tokens=8, seed=7))  # fields left out: the defaults
    assert r.choices[0].message.content == solo.text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(solo.ids)
    assert r.choices[0].finish_reason == ("stop" if solo.ids[-1] == model.eos else "length")
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True, seed=7)]
    assert "".join(pieces) == solo.text
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True, seed=7,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(solo.ids)
    assert chunks[-1].usage.prompt_tokens == len(prompt)
    sampled = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0.8,
                                             top_p=0.9, seed=3)
    want = model.generate(prompt, **runtime.chat_options(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9,
                                                         seed=3))
    greedy = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert greedy.choices[0].message.content == model.generate(prompt, **runtime.chat_options(
        max_new_tokens=8, do_sample=False)).text  # temperature 0: greedy (the defaults' other options stay)
    assert sampled.choices[0].message.content == want.text
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_openai_fields_applied_as_the_runtime_applies_them(server):
    """stop, logit_bias, presence / frequency penalties, logprobs with top_logprobs and n > 1, through the
    official client, streamed and not: what the runtime gives for the same options."""
    model, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompt = encode_dialogue(model.tokenizer, [m["content"] for m in MESSAGES[1:]], model.eos)
    full = model.generate(prompt, max_new_tokens=16, min_new_tokens=16)
    stop = full.text[len(full.text) // 2:][:2]
    fields = {"max_tokens": 16, "logit_bias": {str(full.ids[1]): -3}, "presence_penalty": 0.4,
              "frequency_penalty": 0.9, "stop": [stop, "zzzz"], "extra_body": {"min_tokens": 16}, "temperature": 0}
    opts = runtime.chat_options(max_new_tokens=16, min_new_tokens=16, logit_bias={full.ids[1]: -3},
                                presence_penalty=0.4, frequency_penalty=0.9, stop=[stop, "zzzz"], do_sample=False)
    want = model.generate(prompt, **opts, top_logprobs=3)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=3, **fields)
    c = r.choices[0]
    assert c.message.content == want.text and c.finish_reason == want.finish_reason
    assert [t.logprob for t in c.logprobs.content] == pytest.approx([t.logprob for t in want.token_logprobs], abs=1e-6)
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob for t in c.logprobs.content)
    assert b"".join(bytes(t.bytes) for t in c.logprobs.content).decode() == model.decode(want.ids)
    pieces, lps, finish = [], [], None
    for ch in client.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=3,
                                             stream=True, **fields):
        pieces.append(ch.choices[0].delta.content or "")
        lps += ch.choices[0].logprobs.content if ch.choices[0].logprobs else []
        finish = ch.choices[0].finish_reason or finish
    assert "".join(pieces) == want.text and finish == want.finish_reason
    assert [t.logprob for t in lps] == [t.logprob for t in c.logprobs.content]
    # n > 1: choice i is the runtime's reply with seed + i, streamed or not
    sampled = {"max_tokens": 8, "temperature": 0.9, "seed": 11}
    many = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, **sampled)
    solo = [model.generate(prompt, **runtime.chat_options(max_new_tokens=8, do_sample=True, temperature=0.9,
                                                          seed=11 + i)) for i in range(3)]
    assert [ch.message.content for ch in sorted(many.choices, key=lambda ch: ch.index)] == [g.text for g in solo]
    assert many.usage.completion_tokens == sum(len(g.ids) for g in solo)
    texts = {i: "" for i in range(3)}
    for ch in client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, stream=True, **sampled):
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
    assert list(texts.values()) == [g.text for g in solo]


def test_assistant_turn_without_content(server):
    model, url = server
    body = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None},
                         {"role": "user", "content": "Hello?"}], "max_tokens": 4, "seed": 1}
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 200
    prompt = model.encode_turn("Hi") + [model.eos] + model.encode_turn("Hello?")
    assert r.json()["choices"][0]["message"]["content"] == model.generate(
        prompt, **runtime.chat_options(max_new_tokens=4, seed=1)).text


@pytest.mark.parametrize("body, param", [
    (b"{not json", None), (b"[1, 2]", None), (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "user"}]}', "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "min_tokens": -2}', "min_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 3, "temperature": 0}', "n"),  # n identical replies
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 9, "temperature": 1}', "n"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": [""]}', "stop"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": 5}', "stop"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"}', "logprobs"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', "top_logprobs"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}', "top_logprobs"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": 5}', "stream_options"),
    # every field is applied or refused, never silently ignored
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_k": -1}', "top_k"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 2.5}', "frequency_penalty"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "presence_penalty": "high"}', "presence_penalty"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 1}}', "logit_bias"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"99999999": 1}}', "logit_bias"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 101}}', "logit_bias"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}',
     "response_format"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}', "tools"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "bogus": 1}', "bogus"),
    (b'{"messages": [{"role": "tool", "content": "hi"}]}', "messages"),
    (b'{"messages": [{"role": "bogus", "content": "hi"}]}', "messages"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', "messages"),
    # what JSON can hold but the server cannot read: 400, never 500
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5001 + b"}", None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1' + b"0" * 400 + b"}", "temperature"),
    (b"[" * 100_000 + b"]" * 100_000, None),
])
def test_bad_requests_get_openai_errors(server, body, param):
    _, url = server
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param


def test_history_over_the_context_is_400(server):
    _, url = server
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "word " * 1200}]})
    assert r.status_code == 400 and "exceeds the context" in r.json()["error"]["message"]


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


def test_chat_page_is_served(server):
    _, url = server
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text and 'id="model">"tiny"</script>' in r.text and "stream: true" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    # the page's data is JSON in a data block: no value can close it or inject markup
    from dialogpt_onnx.serve.http import _page_data

    assert json.loads(_page_data('</script><b>"x"&')) == '</script><b>"x"&' and "<" not in _page_data("</script>")


def _chromium() -> tuple[str, str] | None:
    import os
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("DIALOGPT_REQUIRE_BROWSER"):  # CI installs them: there a missing browser is a failure
        pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
    return None


def test_chat_page_streams_a_reply_in_a_real_browser(server):
    found = _chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver here (apt-get install chromium chromium-driver); CI runs this")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, url = server
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        driver.get(f"{url}/?seed=5")  # the page sends the address's decoding options
        box = driver.find_element(By.ID, "msg")
        for turn in ("Do you like movies?", "Which ones?"):
            box.send_keys(turn)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60).until(
                lambda d, n=turn: len(d.find_elements(By.CSS_SELECTOR, ".bot[data-done='1']"))
                == (1 if n.startswith("Do") else 2))
        bots = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".bot")]
        users = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".user")]
        name = driver.find_element(By.ID, "name").text

        def reply(text: str, n: int) -> str:
            driver.find_element(By.ID, "msg").send_keys(text)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bot[data-done='1']")) == n)
            return driver.find_elements(By.CSS_SELECTOR, ".bot")[-1].text

        driver.find_element(By.ID, "new").click()  # a new chat: nothing of the old one is shown or sent
        cleared = driver.find_elements(By.CSS_SELECTOR, "#log div")
        driver.find_element(By.TAG_NAME, "summary").click()
        for field, value in (("temperature", "0"), ("max_tokens", "8")):  # settings: greedy, 8 tokens
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(value)
        greedy = reply("Hello", 1)
        long_turn = "word " * 600  # two of these pass the 1,024-token context
        long_replies = [reply(long_turn, 2), reply(long_turn, 3)]
        errors = driver.find_elements(By.CSS_SELECTOR, ".bot.note")
        driver.set_window_size(375, 800)  # a phone's width: nothing wider than the screen
        width = driver.execute_script("return document.documentElement.scrollWidth")
    finally:
        driver.quit()
    assert users == ["Do you like movies?", "Which ones?"] and name == "tiny"
    want = chat_replies(model, ["Do you like movies?", "Which ones?"],
                        **runtime.chat_options(max_new_tokens=64, seed=5))
    assert [b.strip() for b in bots] == [w.text.strip() for w in want]  # the streamed text, as a ChatSession's
    assert cleared == []
    prompt = model.encode_turn("Hello")
    want_greedy = model.generate(prompt, **runtime.chat_options(max_new_tokens=8, do_sample=False))
    assert greedy.strip() == want_greedy.text.strip()
    assert 2 * len(model.encode_turn(long_turn)) > model.max_length  # the second could be sent only trimmed
    assert all(r and not r.startswith("error") for r in long_replies) and not errors  # the oldest turns went
    assert width <= 375


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
    import json
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
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


def test_openai_message_forms_and_fields_are_applied(server):
    """List-of-parts content, developer (as system) messages, top_k, n: null, max_tokens: null beside
    max_completion_tokens: each applied as OpenAI defines it."""
    model, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    prompt = encode_dialogue(model.tokenizer, ["Do you like movies?"], model.eos)
    want = model.generate(prompt, **runtime.chat_options(max_new_tokens=6, seed=3))
    text_parts = [{"type": "text", "text": "Do you like "}, {"type": "text", "text": "movies?"}]
    parts = [{"role": "developer", "content": "be nice"}, {"role": "user", "content": text_parts}]
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": parts, "max_tokens": None, "seed": 3,
                                                         "max_completion_tokens": 6, "n": None}).json()
    assert r["choices"][0]["message"]["content"] == want.text and r["usage"]["completion_tokens"] == len(want.ids)
    question = [{"role": "user", "content": "Do you like movies?"}]
    sampled = client.chat.completions.create(model="tiny", messages=question, max_tokens=8, temperature=0.9,
                                             seed=4, extra_body={"top_k": 3})
    assert sampled.choices[0].message.content == model.generate(prompt, **runtime.chat_options(
        max_new_tokens=8, do_sample=True, temperature=0.9, top_k=3, seed=4)).text


def test_the_model_is_named_by_its_base_name_never_its_path(exported):
    from dialogpt_onnx.serve.http import public_name

    assert public_name(exported("int8")) == exported("int8").name and "/" not in public_name(exported("int8"))
    assert public_name(exported("int8"), "my-bot") == "my-bot"


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
            return httpx.get(f"{url}/health").json()["prefix_cache"]["reused_tokens"]

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

    from dialogpt_onnx.serve.auth import ApiKeys, read_keys

    a, b = "a" * 24, "b" * 24
    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=2)
    try:
        client = TestClient(create_app(engine, "tiny", api_keys=ApiKeys([a, b])))
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
        client = TestClient(create_app(engine, "tiny", max_body_bytes=4096))
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

    from dialogpt_onnx.serve.http import host_allow_list

    assert host_allow_list("127.0.0.1", []) == ["127.0.0.1", "::1", "localhost"]
    assert host_allow_list("0.0.0.0", ["chat.example.org"]) == ["127.0.0.1", "::1", "chat.example.org", "localhost"]
    assert host_allow_list("0.0.0.0", []) is None  # every interface, no name given: the CLI warns
    model = runtime.load(exported("int8"))
    engine = Engine(model, max_batch=1)
    try:
        app = create_app(engine, "tiny", allowed_hosts=host_allow_list("127.0.0.1", []))
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        assert client.get("/", headers={"host": "localhost:8000"}).status_code == 200
        for path in ("/", "/v1/models", "/health"):
            assert client.get(path, headers={"host": "attacker.example:8000"}).status_code == 400
        steps = engine.steps
        r = client.post("/v1/chat/completions", json=chat, headers={"host": "attacker.example"})
        assert r.status_code == 400 and engine.steps == steps  # nothing ran for it
    finally:
        engine.close()


def test_a_history_that_cannot_fit_is_refused_before_tokenizing(exported, monkeypatch):
    """30,000 messages, or one message of 300 KB: 400 naming messages, without a token encoded (encoding
    holds a thread for up to a second); what may fit is encoded in one call that releases the GIL."""
    from starlette.testclient import TestClient

    model = runtime.load(exported("int8"))
    encoded: list[int] = []
    real = model.encode_turns
    monkeypatch.setattr(model, "encode_turns", lambda texts: encoded.append(len(texts)) or real(texts))
    engine = Engine(model, max_batch=1)
    try:
        with TestClient(create_app(engine, "tiny")) as client:
            for messages in ([{"role": "user", "content": "hi"}] * 30_000,
                             [{"role": "user", "content": "word " * 60_000}]):
                r = client.post("/v1/chat/completions", json={"messages": messages})
                assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
                assert r.json()["error"]["code"] == "context_length_exceeded"
            assert encoded == []
            ok = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
            assert ok.status_code == 200 and encoded == [3]  # three turns, one call
            # one that passes the cheap bound but not the context once tokenized: the same answer
            over = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "word " * 1100}]})
            assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"
            assert over.json()["error"]["param"] == "messages"
    finally:
        engine.close()
