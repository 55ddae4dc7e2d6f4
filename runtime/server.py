"""OpenAI-compatible HTTP server over the batching engine (Starlette + uvicorn: `pip install .[serve]`).

    python -m runtime serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--max-queue 64]
                                      [--session-cache-mb 256]

POST /v1/chat/completions: the messages' contents become DialoGPT turns, each ended by <|endoftext|>
(system messages are skipped: DialoGPT has no system prompt). `max_tokens`, `temperature` (0 or omitted:
greedy, the runtime's default; > 0 samples), `top_p`, `seed`, `stream` (server-sent events). GET
/v1/models, GET /health. Errors use OpenAI's body ({"error": {...}}): 400 for bad input, 429 with
Retry-After when the engine's queue is full. A streaming client that disconnects frees its row.
A chat's next turn reuses the KV its previous turn left (the engine's session cache): only the new
turns are prefilled. A reply sent back as an assistant message is read as the tokens this server
generated for that text (ReplyTokens), so a served chat gets the replies a ChatSession gets.
SIGTERM / Ctrl-C: uvicorn stops taking connections, lets in-flight replies finish, then the process
ends by that signal (exit status 143 / 130, as the project's other CLIs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from .engine import Engine, EngineClosed, EngineFull


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def sampling_options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's request fields -> the runtime's generation options (checked; BadRequest names the field)."""
    opts: dict[str, Any] = {}

    def number(name: str) -> float | None:
        v = body.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise BadRequest(f"{name} must be a number, got {v!r}", name)
        return float(v)

    mt = body.get("max_tokens", body.get("max_completion_tokens"))
    if mt is not None:
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise BadRequest(f"max_tokens must be an integer >= 1, got {mt!r}", "max_tokens")
        opts["max_new_tokens"] = mt
    mn = body.get("min_tokens")  # an extension (as vLLM's): no end of turn before this many tokens
    if mn is not None:
        if isinstance(mn, bool) or not isinstance(mn, int) or mn < 0:
            raise BadRequest(f"min_tokens must be an integer >= 0, got {mn!r}", "min_tokens")
        opts["min_new_tokens"] = mn
    temperature, top_p = number("temperature"), number("top_p")
    if temperature is not None and temperature < 0:
        raise BadRequest(f"temperature must be >= 0, got {temperature}", "temperature")
    if temperature:  # 0 (or omitted) is greedy, as OpenAI's API defines temperature 0
        opts.update(do_sample=True, temperature=temperature)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise BadRequest(f"top_p must be in (0, 1], got {top_p}", "top_p")
        if opts.get("do_sample"):
            opts["top_p"] = top_p
    # OpenAI fields this server does not implement: refused when they ask for something, not ignored
    if body.get("n", 1) != 1:
        raise BadRequest(f"n must be 1 (one choice per request), got {body['n']!r}", "n")
    if body.get("stop") not in (None, [], ""):
        raise BadRequest("stop sequences are not supported: DialoGPT ends its turn itself; use max_tokens", "stop")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported here: use the runtime's model.score()", "logprobs")
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise BadRequest(f"seed must be an integer >= 0, got {seed!r}", "seed")
        opts["seed"] = seed
    return opts


def dialogue(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's turns as (role, content), system messages left out."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must have a string role and a string content", "messages")
        if m["role"] != "system":
            turns.append((m["role"], m["content"]))
    if not turns:
        raise BadRequest("messages hold no user or assistant turn", "messages")
    return turns


class ReplyTokens:
    """The token ids of recent replies, by their text, so that a client's next request (which sends the
    reply back as text) is rebuilt from the tokens the model produced, not from a re-encoding of the text.

    Why: byte-level BPE does not round-trip a model's output (a reply may spell " movies" as " mov" +
    "ies"; re-encoding gives " movies"), so a re-encoded history diverges from the stored KV at the first
    such token and is prefilled again from there; it also differs from what a ChatSession, which keeps
    ids, feeds the model. With these ids a served chat replies exactly as a ChatSession does. Bounded
    (least recently used out); thread-safe (the server's handlers record and read it).
    """

    def __init__(self, max_replies: int = 4096) -> None:
        self.max_replies = max_replies
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, text: str, ids: list[int]) -> None:
        with self._lock:
            self._ids[text] = tuple(ids)
            self._ids.move_to_end(text)
            while len(self._ids) > self.max_replies:
                self._ids.popitem(last=False)

    def get(self, text: str) -> list[int] | None:
        with self._lock:
            ids = self._ids.get(text)
            if ids is not None:
                self._ids.move_to_end(text)
        return None if ids is None else list(ids)


def dialogue_ids(model, turns: list[tuple[str, str]], replies: ReplyTokens) -> list[int]:
    """DialoGPT's prompt: every turn + EOS; an assistant turn this server wrote is taken as the ids it
    generated (see ReplyTokens), any other turn is encoded."""
    ids: list[int] = []
    for role, text in turns:
        known = replies.get(text) if role == "assistant" else None
        ids += model.encode_turn(text) if known is None else known + [model.eos]
    return ids


def create_app(engine: Engine, model_name: str, close_engine: bool = False):
    """The ASGI app over `engine`; close_engine: the app's shutdown closes the engine (Ray replicas)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    model = engine.model
    replies = ReplyTokens()

    async def health(_: Request) -> JSONResponse:
        # pid: which process (Ray replica) answered; the engine's queue and session cache
        return JSONResponse({"status": "ok", "pid": os.getpid(), **engine.stats()})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                                         "owned_by": "dialogpt-onnx"}]})

    async def completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            turns = dialogue(body)
            opts = sampling_options(body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
            so = body.get("stream_options") or {}
            if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
                raise BadRequest("stream_options must be an object like {\"include_usage\": true}", "stream_options")
            prompt = dialogue_ids(model, turns, replies)
            req = engine.submit(prompt, **opts)
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error", e.param)
        except ValueError as e:  # the runtime's checks: options out of range, a history over the context
            return _error(400, str(e), "invalid_request_error")
        except EngineFull as e:
            return _error(429, str(e), "rate_limit_error", headers={"Retry-After": "1"})
        except EngineClosed as e:
            return _error(503, str(e), "server_error", headers={"Retry-After": "5"})
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": created, "model": model_name}
        if stream:
            usage_of = len(prompt) if so.get("include_usage") else None
            return StreamingResponse(_sse(req, head, model, usage_of, replies), media_type="text/event-stream")
        try:
            ids = await asyncio.to_thread(lambda: list(req.tokens()))
        except EngineClosed as e:
            return _error(503, str(e), "server_error", headers={"Retry-After": "5"})
        finish = "stop" if ids[-1:] == [model.eos] else "length"
        text = model.decode(ids)
        replies.record(text, ids[:-1] if finish == "stop" else ids)
        return JSONResponse({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                      "total_tokens": len(prompt) + len(ids)}})

    async def page(_: Request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(CHAT_PAGE.replace("{{MODEL}}", json.dumps(model_name)))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if close_engine:
            engine.close()

    return Starlette(routes=[Route("/", page), Route("/health", health), Route("/v1/models", models),
                             Route("/v1/chat/completions", completions, methods=["POST"])], lifespan=lifespan)


# The web chat page: keeps the conversation in the browser and streams each reply from the API above.
CHAT_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dialogpt-onnx chat</title>
<style>
body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}
#log div{margin:.4rem 0;padding:.5rem .7rem;border-radius:.6rem;white-space:pre-wrap}
.user{background:#e8f0fe;margin-left:4rem}.bot{background:#f1f3f4;margin-right:4rem}
form{display:flex;gap:.5rem;margin-top:1rem}input{flex:1;padding:.5rem}
</style></head><body>
<h1>dialogpt-onnx</h1><div id="log"></div>
<form id="f"><input id="msg" autocomplete="off" placeholder="Say something" autofocus>
<button id="send">Send</button></form>
<script>
const MODEL = {{MODEL}}, history = [];
const log = document.getElementById("log"), msg = document.getElementById("msg");
function bubble(cls, text) {
  const d = document.createElement("div"); d.className = cls; d.textContent = text;
  log.appendChild(d); return d;
}
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const text = msg.value.trim(); if (!text) return;
  msg.value = ""; bubble("user", text); history.push({role: "user", content: text});
  const out = bubble("bot", "");
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model: MODEL, messages: history, stream: true, max_tokens: 64})});
  if (!r.ok) { out.textContent = "error: " + (await r.json()).error.message; history.pop(); return; }
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = "";
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const delta = JSON.parse(line.slice(6)).choices[0].delta;
      if (delta.content) out.textContent += delta.content;
    }
  }
  out.dataset.done = "1";
  history.push({role: "assistant", content: out.textContent});
};
</script></body></html>
"""


async def _sse(req, head: dict, model, prompt_tokens: int | None, replies: ReplyTokens):
    """Server-sent events in OpenAI's chunk format; a client that goes away cancels the request. With
    prompt_tokens (stream_options.include_usage), a last chunk carries the usage, as OpenAI sends it."""
    from .text import StreamDecoder

    def chunk(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    sd = StreamDecoder(model.tokenizer)
    finish, n, text = "length", 0, []
    loop, ready = asyncio.get_running_loop(), asyncio.Event()
    req.listen(lambda: loop.call_soon_threadsafe(ready.set))  # no thread parked per token
    try:
        yield chunk({"role": "assistant", "content": ""})
        over = False
        while not over:
            await ready.wait()
            ready.clear()
            try:
                got = req.poll()
            except EngineClosed:  # the server is shutting down: end the stream where it is
                break
            out = []  # the tokens that arrived together go out in one write, one event each
            for t in got:
                if t is None:
                    over = True
                    break
                n += 1
                if t == model.eos:
                    finish = "stop"
                    continue
                piece = sd.push(t)
                if piece:
                    text.append(piece)
                    out.append(chunk({"content": piece}))
            if out:
                yield "".join(out)
        tail = sd.flush()
        if tail:
            text.append(tail)
            yield chunk({"content": tail})
        replies.record("".join(text), sd.ids)  # EOS is not among them: it is never pushed
        yield chunk({}, finish)
        if prompt_tokens is not None:
            yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # no-op when finished; frees the row when the client disconnected


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8, max_queue: int = 64,
          session_cache_mb: float = 256, threads: int | None = None) -> None:
    import uvicorn

    from .model import load

    model = load(model_dir, threads=threads)
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, session_cache_mb=session_cache_mb)
    try:
        uvicorn.run(create_app(engine, model_name=str(model_dir)), host=host, port=port, log_level="warning")
    finally:
        engine.close()
