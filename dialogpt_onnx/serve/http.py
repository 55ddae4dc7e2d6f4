"""The OpenAI-compatible HTTP app over the batching engine (Starlette; `pip install .[serve]`).

POST /v1/chat/completions: the messages' contents become DialoGPT turns, each ended by <|endoftext|>
(system messages are skipped: DialoGPT has no system prompt). Every OpenAI generation field is applied
(see openai_api.APPLIED; what a request leaves out is the runtime's chat defaults, temperature 0 is
greedy), `stream` as server-sent events. GET /v1/models, /health, /ready, /metrics, / (the chat page).
Errors use OpenAI's body ({"error": {...}}): 400 for bad input, 429 with Retry-After when the engine's
queue is full. A client that disconnects frees its row. A chat's next turn reuses the KV its previous
turn left (the engine's prefix cache): only the new turns are prefilled. A reply sent back as an
assistant message is read as the tokens this server generated for that text (ReplyTokens), so a served
chat gets the replies a ChatSession gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime import ContextOverflow, DialogModel, UsageError
from dialogpt_onnx.runtime.text import StopText

from .access_log import AccessLog
from .auth import ApiKeys, Unauthorized
from .engine import Engine, EngineClosed, EngineFull, Request
from .metrics import CountResponses, Metrics
from .openai_api import BadRequest, ChatRequest, dialogue_ids, param_of, token_logprob_entries
from .prefix_cache import ReplyTokens

CHAT_PAGE = files(__package__ or "dialogpt_onnx.serve").joinpath("static/chat.html").read_text(encoding="utf-8")


# A whole 1,024-token history is ~5 KB of text; 1 MiB leaves room for any client's JSON around it.
MAX_BODY_BYTES = 1 << 20


BODY_TIMEOUT = 30.0  # seconds to send a whole body: 1 MiB at 35 KB/s


class _BodyLate(Exception):
    """The client did not send its whole body within the body timeout."""


async def _bounded_body(request: Any, limit: int, timeout: float) -> bytes | None:
    """The request body, or None as soon as it is known to pass `limit` (from Content-Length, or while
    reading a chunked body): an oversized request costs neither its memory nor its parsing. Raises
    _BodyLate when the whole body takes longer than `timeout` seconds (a trickling client holds nothing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return None
                parts.append(chunk)
    except TimeoutError:
        raise _BodyLate from None
    return b"".join(parts)


def _error(status: int, message: str, kind: str, param: str | None = None, headers: dict | None = None,
           code: str | None = None):
    """OpenAI's error body."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _page_headers(page: str) -> dict[str, str]:
    """The page runs its own inline script and style only (by hash), talks to this origin only, and is never
    framed by another site."""
    def digest(kind: str) -> str:
        bodies = re.findall(rf"<{kind}>(.*?)</{kind}>", page, flags=re.S)  # no attributes: code, not data
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in bodies)

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


def _page_data(value: object) -> str:
    """JSON for the page's data block: `<`, `>` and `&` escaped, so no value can close the block."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def create_app(engine: Engine, model_name: str, close_engine: bool = False, api_keys: ApiKeys | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, allowed_hosts: list[str] | None = None,
               body_timeout: float = BODY_TIMEOUT, access_log: bool = False):
    """The ASGI app over `engine`; close_engine: the app's shutdown closes the engine (Ray replicas);
    api_keys: when set, every route but the page, /health and /ready needs one of them; a request body over
    max_body_bytes is refused (413) before the rest of it is read, one not sent within body_timeout seconds
    gets 408; allowed_hosts: the Host headers served (400 for others: a page on another site that rebinds
    its name to this address reaches nothing); access_log: a line per API request on stdout."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    model = engine.model
    replies = engine.replies
    keys = api_keys or ApiKeys()
    metrics = Metrics(engine)

    def unauthorized() -> JSONResponse:
        return _error(401, "a valid API key is needed: send Authorization: Bearer KEY", "invalid_request_error",
                      headers={"WWW-Authenticate": "Bearer"}, code="invalid_api_key")

    page = CHAT_PAGE.replace("{{MODEL}}", _page_data(model_name))

    async def health(request: HttpRequest) -> JSONResponse:
        # 503 once the engine cannot take work (its worker died, or it was closed): a supervisor or load
        # balancer sees the truth. pid: which process (Ray replica) answered; the engine's queue and cache.
        if not engine.alive:
            why = f"the engine stopped: {type(engine.failure).__name__}: {engine.failure}" if engine.failure \
                else "the engine is closed"
            return JSONResponse({"status": "error", "message": why, "pid": os.getpid()}, status_code=503)
        try:  # the engine's counters only for key holders: the probe itself is open to all
            keys.tenant(request.headers.get("authorization"))
            detail = engine.stats()
        except Unauthorized:
            detail = {}
        return JSONResponse({"status": "ok", "pid": os.getpid(), **detail})

    async def ready(_: HttpRequest) -> JSONResponse:
        # readiness: the engine takes work now (alive, and its queue has room); 503 tells a balancer to
        # send requests elsewhere for a while
        if not engine.alive:
            return JSONResponse({"status": "unavailable", "message": "the engine stopped"}, status_code=503)
        if engine.stats()["waiting"] >= engine.max_queue:
            return JSONResponse({"status": "busy", "message": "the queue is full"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def metrics_page(request: HttpRequest) -> Response:
        try:
            keys.tenant(request.headers.get("authorization"))
        except Unauthorized:
            return unauthorized()
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def models(request: HttpRequest) -> JSONResponse:
        try:
            keys.tenant(request.headers.get("authorization"))
        except Unauthorized:
            return unauthorized()
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                                         "owned_by": "dialogpt-onnx"}]})

    async def completions(request: HttpRequest):
        try:
            key_tenant = keys.tenant(request.headers.get("authorization"))
        except Unauthorized:
            return unauthorized()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # a cross-site page can POST text/plain without asking; only JSON bodies are read
            return _error(415, "send the body as Content-Type: application/json", "invalid_request_error")
        try:
            raw = await _bounded_body(request, max_body_bytes, body_timeout)
        except _BodyLate:
            return _error(408, f"the request body was not sent within {body_timeout:g} s (the server's "
                          "--body-timeout)", "invalid_request_error", headers={"Connection": "close"})
        if raw is None:
            # Connection: close, so that the server does not read (and parse) the rest of it
            return _error(413, f"the request body is over {max_body_bytes} bytes (the server's --max-body-kb)",
                          "invalid_request_error", headers={"Connection": "close"})

        def admit() -> tuple[ChatRequest, list[int], str | None, list[Request]]:
            """Parse, check, tokenize and queue the request (n rows for n choices): in a worker thread, so
            that a big body never stalls the event loop (other clients' streams)."""
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON or not UTF-8, an int of > 4,300 digits, too deep
                raise BadRequest("the request body is not valid JSON (or nests or numbers beyond what this "
                                 "server reads)") from None
            # system messages count too: a body of 30,000 of any kind is refused before one is read
            chat = ChatRequest.parse(body, max_turns=model.max_length)
            # a key's requests share its cache (narrowed by a salt); without keys, the salt alone
            tenant = key_tenant if chat.cache_salt is None else f"{key_tenant or ''}/{chat.cache_salt}"
            namespace = engine.cache_namespace(tenant)
            prompt = dialogue_ids(model, chat.turns, replies, namespace)
            seed = chat.options.get("seed")
            reqs: list[Request] = []
            try:
                for i in range(chat.n):  # choice i samples with seed + i: reproducible, and not all alike
                    # (the first submit checked the seed: only then is seed + i computed)
                    choice_seed = {} if seed is None or i == 0 else {"seed": (seed + i) % 2**63}
                    reqs.append(engine.submit(prompt, tenant=tenant, **{**chat.options, **choice_seed}))
            except BaseException:
                for r in reqs:
                    r.cancel()
                raise
            return chat, prompt, namespace, reqs

        try:
            chat, prompt, namespace, reqs = await asyncio.to_thread(admit)
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error", e.param, code=e.code)
        except ContextOverflow as e:  # the history (with max_tokens) is longer than the model reads: OpenAI's code
            return _error(400, str(e), "invalid_request_error", "messages", code="context_length_exceeded")
        except UsageError as e:  # the runtime's checks: options out of range
            return _error(400, str(e), "invalid_request_error", param_of(e.arg))
        except EngineFull as e:
            return _error(429, str(e), "rate_limit_error", headers={"Retry-After": "1"})
        except EngineClosed as e:
            return _error(503, str(e), "server_error", headers={"Retry-After": "5"})
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if chat.stream:
            usage_of = len(prompt) if chat.include_usage else None
            return StreamingResponse(_sse(reqs, head, model, usage_of, replies, namespace, chat.logprobs, metrics),
                                     media_type="text/event-stream")
        try:
            all_ids = await asyncio.gather(*(_whole_reply(r, request) for r in reqs))
        except EngineClosed as e:
            return _error(503, str(e), "server_error", headers={"Retry-After": "5"})
        except _ClientGone:  # nobody to answer: its rows were freed at the next step
            for r in reqs:
                r.cancel()
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - this request failed in the engine (which goes on): a 500 for it alone
            for r in reqs:
                r.cancel()
            return _error(500, f"generating this reply failed ({type(e).__name__}: {e})", "server_error")
        finally:
            for r in reqs:
                metrics.reply_done(r)
        choices = []
        for i, (r, ids) in enumerate(zip(reqs, all_ids, strict=True)):
            reply = _Reply(model, r)
            for t in ids:
                reply.push(t)
            reply.finish(replies, namespace)
            choices.append({"index": i, "message": {"role": "assistant", "content": "".join(reply.text)},
                            "logprobs": {"content": reply.logprobs} if chat.logprobs else None,
                            "finish_reason": reply.finish_reason})
        completion = sum(map(len, all_ids))
        return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": {
            "prompt_tokens": len(prompt), "completion_tokens": completion, "total_tokens": len(prompt) + completion}})

    headers = _page_headers(page)

    async def chat_page(_: HttpRequest) -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if close_engine:
            engine.close()

    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    hosts = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    return Starlette(routes=[Route("/", chat_page), Route("/health", health), Route("/ready", ready),
                             Route("/metrics", metrics_page), Route("/v1/models", models),
                             Route("/v1/chat/completions", completions, methods=["POST"])], lifespan=lifespan,
                     middleware=[*hosts, Middleware(CountResponses, metrics=metrics),
                                 *([Middleware(AccessLog)] if access_log else [])])


class _ClientGone(Exception):
    """The client of a non-streamed request disconnected before its reply was done."""


async def _whole_reply(req: Request, request: Any, check_every: float = 0.25) -> list[int]:
    """A non-streamed reply's token ids, waiting on the engine's callback; a client that disconnects
    meanwhile cancels the request (its row is freed at the next step) instead of leaving it computing."""
    loop, ready = asyncio.get_running_loop(), asyncio.Event()
    req.listen(lambda: loop.call_soon_threadsafe(ready.set))
    ids: list[int] = []
    checked = loop.time()
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=check_every)
        ready.clear()
        for t in req.poll():
            if t is None:
                return ids
            ids.append(t)
        if loop.time() - checked >= check_every:  # tokens may flow without pause: check on a clock
            checked = loop.time()
            if await request.is_disconnected():
                req.cancel()
                raise _ClientGone


class _Reply:
    """One choice's text and log-probabilities as its tokens arrive: the text cut at a stop string as the
    engine cut the reply (the same StopText), log-probabilities for every token but EOS."""

    def __init__(self, model: DialogModel, req: Request) -> None:
        self.model, self.req = model, req
        self.stop = StopText(model.tokenizer, req.opts.stop)
        self.text: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.count = 0  # tokens received, EOS included
        self.finish_reason = "length"

    def push(self, token: int) -> tuple[str, list[dict[str, Any]]]:
        """The text and log-probability entries this token adds."""
        k, self.count = self.count, self.count + 1
        if token == self.model.eos:
            return "", []
        piece = self.stop.push(token)
        self.text.append(piece)
        lp = [token_logprob_entries(self.model, self.req.logprobs[k])] if self.req.opts.top_logprobs is not None \
            else []
        self.logprobs += lp
        return piece, lp

    def finish(self, replies: ReplyTokens, namespace: str | None) -> str:
        """The text held back at the end; records the reply's ids by its text (see ReplyTokens) unless a
        stop string cut it (the text then no longer spells the ids)."""
        tail = self.stop.flush()
        self.text.append(tail)
        if self.stop.matched is None:
            replies.record(namespace, "".join(self.text), self.stop.decoder.ids)  # EOS is never pushed
        self.finish_reason = self.req.finish_reason or "length"
        return tail


async def _sse(reqs: list[Request], head: dict[str, Any], model: DialogModel, prompt_tokens: int | None,
               replies: ReplyTokens, namespace: str | None, logprobs: bool, metrics: Metrics):
    """Server-sent events in OpenAI's chunk format, the n choices' chunks interleaved as their tokens come;
    a client that goes away cancels the requests. With logprobs, one chunk per token carries its entry. With
    prompt_tokens (stream_options.include_usage), a last chunk carries the usage, as OpenAI sends it."""

    def chunk(i: int, delta: dict, finish: str | None = None, lp: list | None = None) -> str:
        choice = {"index": i, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": lp} if lp is not None else None
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [choice]}) + "\n\n"

    loop, ready = asyncio.get_running_loop(), asyncio.Event()
    for r in reqs:
        r.listen(lambda: loop.call_soon_threadsafe(ready.set))  # no thread parked per token
    out = [_Reply(model, r) for r in reqs]
    over = [False] * len(reqs)
    try:
        yield "".join(chunk(i, {"role": "assistant", "content": ""}) for i in range(len(reqs)))
        while not all(over):
            await ready.wait()
            ready.clear()
            events = []  # the tokens that arrived together go out in one write, one event each
            for i, (r, reply) in enumerate(zip(reqs, out, strict=True)):
                if over[i]:
                    continue
                try:
                    got = r.poll()
                except EngineClosed:  # the server is shutting down: end the stream where it is
                    over = [True] * len(reqs)
                    break
                except Exception as e:  # noqa: BLE001 - this choice failed in the engine: say so, end it
                    over[i] = True
                    events.append("data: " + json.dumps({"error": {
                        "message": f"generating this reply failed ({type(e).__name__}: {e})",
                        "type": "server_error", "param": None, "code": None}}) + "\n\n")
                    continue
                for t in got:
                    if t is None:
                        over[i] = True
                        tail = reply.finish(replies, namespace)
                        if tail:
                            events.append(chunk(i, {"content": tail}))
                        events.append(chunk(i, {}, reply.finish_reason))
                        break
                    piece, lp = reply.push(t)
                    if piece or lp:
                        events.append(chunk(i, {"content": piece}, lp=lp or None))
            if events:
                yield "".join(events)
        if prompt_tokens is not None:
            n = sum(reply.count for reply in out)
            yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}}) + "\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for r in reqs:
            r.cancel()  # no-op when finished; frees the row when the client disconnected
            metrics.reply_done(r)


def public_name(model_dir: str | Path, model_name: str | None = None) -> str:
    """The name clients see (`model` in responses, /v1/models, the page): never the directory's path."""
    return model_name or Path(model_dir).resolve().name


@dataclass(frozen=True)
class Deadlines:
    """How long a client may take (seconds), each a flag of `dialogpt-onnx serve`: to send a request's headers
    (from connecting or from its previous response), to send its body (408 past it), to send its next
    request on an idle keep-alive connection; and how long in-flight replies may run after SIGTERM / SIGINT
    before they are cancelled and the process exits."""

    header: float = 10.0
    body: float = BODY_TIMEOUT
    idle: float = 5.0
    shutdown: float = 30.0


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8, max_queue: int = 64,
          prefix_cache_mb: float = 256, threads: int | None = None, model_name: str | None = None,
          share_prefix_cache: bool = False, api_keys: list[str] | None = None,
          max_body_bytes: int = MAX_BODY_BYTES, allowed_hosts: list[str] | None = None,
          deadlines: Deadlines = Deadlines(), access_log: bool = True, prefix_cache_file: str | None = None) -> None:
    """Load the model, start the engine and serve the app with uvicorn until SIGINT / SIGTERM: uvicorn
    stops taking connections, lets in-flight replies finish for up to deadlines.shutdown seconds (then
    cancels them; a second signal cancels them at once), then the process ends by that signal."""
    import uvicorn

    from dialogpt_onnx.runtime import load

    from .connections import timed_protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:  # a second signal of any kind: stop waiting for in-flight replies
                self.force_exit = True
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            # here, not after run(): uvicorn re-raises the stopping signal when run() ends, and the process dies
            await asyncio.to_thread(engine.close)  # which saves the prefix cache, if asked to

    sock = listen(host, port)  # before the model loads: a taken port or a bad host is one line at once
    model = load(model_dir, threads=threads)
    engine = Engine(model, max_batch=max_batch, max_queue=max_queue, prefix_cache_mb=prefix_cache_mb,
                    share_prefix_cache=share_prefix_cache, prefix_cache_file=prefix_cache_file)
    if engine.prefix_cache_status:
        print(engine.prefix_cache_status, flush=True)
    try:
        app = create_app(engine, model_name=public_name(model_dir, model_name), api_keys=ApiKeys(api_keys or []),
                         max_body_bytes=max_body_bytes, allowed_hosts=host_allow_list(host, allowed_hosts or []),
                         body_timeout=deadlines.body, access_log=access_log)
        name = "http://" + (f"[{host}]" if ":" in host else host) + f":{port}"
        print(f"serving {public_name(model_dir, model_name)} ({model.manifest.variant}, {model.max_length} tokens of "
              f"context) on {name}: chat page {name}/, API {name}/v1; batch {max_batch}, queue {max_queue}, "
              f"API keys {'on' if api_keys else 'off'}{', access log on stdout' if access_log else ''}; "
              "Ctrl-C stops", flush=True)
        config = uvicorn.Config(app, log_level="warning", http=timed_protocol(deadlines.header),
                                timeout_keep_alive=max(1, round(deadlines.idle)),
                                timeout_graceful_shutdown=max(1, round(deadlines.shutdown)))
        Server(config).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()


LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


def host_allow_list(bound: str, extra: list[str]) -> list[str] | None:
    """Host headers to serve: this machine's loopback names, the bound address and the --allowed-host
    names. None (any Host) only when bound to every interface with no name given: then the operator's
    proxy or firewall decides (the CLI warns)."""
    if bound in ("0.0.0.0", "::", "") and not extra:
        return None
    return sorted({*LOOPBACK_NAMES, *([bound] if bound not in ("0.0.0.0", "::", "") else []), *extra})


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, or a UsageError naming what is wrong with --host / --port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e}): give an IP such as 127.0.0.1 "
                         "or 0.0.0.0", "host") from None
    family, _, _, _, address = infos[0]
    try:
        return socket.create_server(address, family=family, backlog=2048)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise UsageError(f"cannot listen on {host}:{port} ({why}): choose another --port (or --host), or stop "
                         "what holds it", "port") from None
