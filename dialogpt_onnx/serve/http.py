"""The OpenAI-compatible HTTP routes over the batching engine (Starlette; `pip install .[serve]`): thin,
each one checks who is asking and what was sent, hands the work to the chat service, and maps the outcome
to a response.

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
import contextlib
import os
from typing import Any

from dialogpt_onnx.runtime import ContextOverflow, UsageError

from .auth import ApiKeys, Unauthorized
from .chat_service import ChatService, ClientGone
from .config import DEFAULTS, ServeConfig
from .engine import Engine, EngineClosed, EngineFull
from .metrics import CountResponses, Metrics
from .openai_api import BadRequest, param_of
from .page import page_for, page_headers


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
           code: str | None = None) -> Any:
    """OpenAI's error body."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _unauthorized() -> Any:
    return _error(401, "a valid API key is needed: send Authorization: Bearer KEY", "invalid_request_error",
                  headers={"WWW-Authenticate": "Bearer"}, code="invalid_api_key")


def _refused(e: Exception) -> Any:
    """The response to a request the service did not admit."""
    if isinstance(e, BadRequest):
        return _error(400, str(e), "invalid_request_error", e.param, code=e.code)
    if isinstance(e, ContextOverflow):  # the history (with max_tokens) is longer than the model reads
        return _error(400, str(e), "invalid_request_error", "messages", code="context_length_exceeded")
    if isinstance(e, UsageError):  # the runtime's checks: options out of range
        return _error(400, str(e), "invalid_request_error", param_of(e.arg))
    if isinstance(e, EngineFull):
        return _error(429, str(e), "rate_limit_error", headers={"Retry-After": "1"})
    assert isinstance(e, EngineClosed)
    return _error(503, str(e), "server_error", headers={"Retry-After": "5"})


class _Api:
    """The routes, over one engine and its chat service."""

    def __init__(self, engine: Engine, model_name: str, config: ServeConfig) -> None:
        self.engine, self.model_name, self.config = engine, model_name, config
        self.keys = ApiKeys(config.api_keys, config.admin_keys)
        self.metrics = Metrics(engine)
        self.service = ChatService(engine, model_name, self.metrics)
        self.page = page_for(model_name, engine.model)
        self.page_headers = page_headers(self.page)

    def _tenant(self, request: Any) -> str | None:
        return self.keys.tenant(request.headers.get("authorization"))  # raises Unauthorized

    async def health(self, request: Any) -> Any:
        # 503 once the engine cannot take work (its worker died, or it was closed): a supervisor or load
        # balancer sees the truth. pid: which process (Ray replica) answered; the engine's queue and cache.
        from starlette.responses import JSONResponse

        engine = self.engine
        if not engine.alive:
            why = f"the engine stopped: {type(engine.failure).__name__}: {engine.failure}" if engine.failure \
                else "the engine is closed"
            return JSONResponse({"status": "error", "message": why, "pid": os.getpid()}, status_code=503)
        # Liveness for everyone; a key holder sees its own counters, an admin key the process's: no client
        # learns from here what the others do (their chats, their hits, the queue).
        detail: dict[str, Any] = {}
        try:
            tenant = self._tenant(request)
        except Unauthorized:
            tenant = None
        if tenant is not None:
            detail = {"prefix_cache": engine.stats_of(tenant)}
            if self.keys.is_admin(tenant):
                detail = {**engine.stats(), "tenant": detail["prefix_cache"]}
        return JSONResponse({"status": "ok", "pid": os.getpid(), **detail})

    async def ready(self, _: Any) -> Any:
        # readiness: the engine takes work now (alive, and its queue has room); 503 tells a balancer to
        # send requests elsewhere for a while
        from starlette.responses import JSONResponse

        if not self.engine.alive:
            return JSONResponse({"status": "unavailable", "message": "the engine stopped"}, status_code=503)
        if self.engine.stats()["waiting"] >= self.engine.max_queue:
            return JSONResponse({"status": "busy", "message": "the queue is full"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def metrics_page(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        try:
            self._tenant(request)
        except Unauthorized:
            return _unauthorized()
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            self._tenant(request)
        except Unauthorized:
            return _unauthorized()
        return JSONResponse({"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                                         "owned_by": "dialogpt-onnx"}]})

    async def chat_page(self, _: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.page, headers=self.page_headers)

    async def completions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        try:
            key_tenant = self._tenant(request)
        except Unauthorized:
            return _unauthorized()
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # a cross-site page can POST text/plain without asking; only JSON bodies are read
            return _error(415, "send the body as Content-Type: application/json", "invalid_request_error")
        limit, deadline = self.config.max_body_bytes, self.config.body_timeout
        try:
            raw = await _bounded_body(request, limit, deadline)
        except _BodyLate:
            return _error(408, f"the request body was not sent within {deadline:g} s (the server's "
                          "--body-timeout)", "invalid_request_error", headers={"Connection": "close"})
        if raw is None:
            # Connection: close, so that the server does not read (and parse) the rest of it
            return _error(413, f"the request body is over {limit} bytes (the server's --max-body-kb)",
                          "invalid_request_error", headers={"Connection": "close"})
        try:
            admitted = await asyncio.to_thread(self.service.admit, raw, key_tenant)
        except (BadRequest, UsageError, EngineFull, EngineClosed) as e:
            return _refused(e)
        if admitted.chat.stream:
            return StreamingResponse(self.service.stream(admitted), media_type="text/event-stream")
        try:
            return JSONResponse(await self.service.answer(admitted, request))
        except EngineClosed as e:
            return _refused(e)
        except ClientGone:  # nobody to answer: its rows were freed at the next step
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - this request failed in the engine (which goes on): a 500 for it alone
            return _error(500, f"generating this reply failed ({type(e).__name__}: {e})", "server_error")


ROUTES = "POST /v1/chat/completions, GET /v1/models, /health, /ready, /metrics and / (the chat page)"


async def _no_route(request: Any, exc: Any) -> Any:
    """OpenAI's error body for a path or method this server does not have (OpenAI clients read JSON)."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        return _error(405, f"{where} is not allowed: this server has {ROUTES}", "invalid_request_error",
                      code="method_not_allowed", headers=getattr(exc, "headers", None))
    if request.url.path.rstrip("/") == "/v1/completions":  # DialoGPT replies to turns: no raw-text completion
        return _error(404, "this server has no legacy completions: DialoGPT is a chat model; POST "
                      "/v1/chat/completions with messages", "invalid_request_error", code="not_found")
    return _error(404, f"no route {where}: this server has {ROUTES}", "invalid_request_error", code="not_found")


def create_app(engine: Engine, model_name: str, config: ServeConfig = DEFAULTS, close_engine: bool = False) -> Any:
    """The ASGI app over `engine`, with `config`'s keys, body limit, body deadline and access log; the
    process adds the Host policy. model_name: what clients see; close_engine: the app's shutdown closes the
    engine (Ray replicas). With api_keys set, every route but the page, /health and /ready needs one."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from .access_log import AccessLog

    api = _Api(engine, model_name, config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        if close_engine:
            engine.close()

    return Starlette(routes=[Route("/", api.chat_page), Route("/health", api.health), Route("/ready", api.ready),
                             Route("/metrics", api.metrics_page), Route("/v1/models", api.models),
                             Route("/v1/chat/completions", api.completions, methods=["POST"])], lifespan=lifespan,
                     exception_handlers={404: _no_route, 405: _no_route},
                     middleware=[Middleware(CountResponses, metrics=api.metrics),
                                 *([Middleware(AccessLog)] if config.access_log else [])])
