"""The request schema, fuzzed: whatever JSON a client sends to /v1/chat/completions, the answer is a
well-formed response or an OpenAI-style 4xx error naming the problem, never a 500 (hypothesis generates
bodies around the real schema: right and wrong types, nulls, huge numbers, nesting, unknown fields)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from dialogpt_onnx import runtime
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
APPLIED = ["max_tokens", "max_completion_tokens", "min_tokens", "temperature", "top_p", "top_k",
           "repetition_penalty", "seed", "stream", "stream_options", "n", "cache_salt", "stop", "logprobs",
           "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty"]
OTHERS = ["tools", "response_format", "model", "user", "bogus"]
ODD = st.integers(-5, 5) | st.floats(-2, 2) | st.integers(min_value=10**400) | JSON  # values of any field
MESSAGE = st.fixed_dictionaries({}, optional={
    "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | JSON,
    "content": st.text(max_size=40) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]),
                                                                      "text": st.text(max_size=10)})) | JSON})
VALID = st.fixed_dictionaries({"role": st.just("user"), "content": st.text("abc xyz?", min_size=1, max_size=20)})
# bodies whose messages are right and with one odd applied field (so that its own check is reached), and
# bodies with anything anywhere
REACHING = st.builds(lambda msgs, field, value: {"messages": msgs, field: value},
                     st.lists(VALID, min_size=1, max_size=3), st.sampled_from(APPLIED), ODD)
ANYTHING = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4) | JSON},
                                 optional={f: ODD for f in APPLIED + OTHERS})


@pytest.fixture(scope="module")
def client(exported):
    engine = Engine(runtime.load(exported("int8")), max_batch=2, max_queue=64)
    yield TestClient(create_app(engine, "tiny"))
    engine.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=REACHING | ANYTHING | JSON)
def test_no_request_body_is_a_server_error(client, body):
    if isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 2}  # short replies: the fuzz is about the schema, not decoding
    # json.dumps writes NaN / Infinity too: what a sloppy client sends, and Python's parser accepts
    r = client.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
    elif body.get("stream") is not True:
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
