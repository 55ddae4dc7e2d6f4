"""The OpenAI-compatible server: the official client works against it unchanged; every field is applied
as the runtime applies it; bad input gets OpenAI-style errors."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from serving import MESSAGES

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.text import encode_dialogue
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app


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
    # int() refuses what str.isdigit accepts; a lone surrogate cannot be hashed (both were 500)
    ('{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"\u00b2": 1}}'.encode(), "logit_bias"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "cache_salt": "\\ud800"}', "cache_salt"),
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
    from dialogpt_onnx.serve.process import public_name

    assert public_name(exported("int8")) == exported("int8").name and "/" not in public_name(exported("int8"))
    assert public_name(exported("int8"), "my-bot") == "my-bot"


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


def test_unknown_routes_answer_openai_errors(server):
    _, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    with pytest.raises(Exception) as e:  # the legacy endpoint: the official client reads the JSON error
        client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
    assert getattr(e.value, "status_code", None) == 404 and "POST /v1/chat/completions" in str(e.value)
    for method, path, status, code in (("GET", "/v2/nothing", 404, "not_found"),
                                       ("GET", "/v1/chat/completions", 405, "method_not_allowed")):
        r = httpx.request(method, f"{url}{path}")
        err = r.json()["error"]
        assert r.status_code == status and err["code"] == code and err["type"] == "invalid_request_error"
        assert f"{method} {path}" in err["message"] and "/v1/chat/completions" in err["message"]
