"""The server process (llama.cpp's context / vLLM's entrypoint): the listening socket, uvicorn with the
project's connection deadlines, the Host policy, and signals — SIGINT / SIGTERM let in-flight replies
finish for config.shutdown_timeout seconds (a second signal cancels them at once), then the process ends
by that signal."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime.errors import UsageError

from .config import ServeConfig


def public_name(model_dir: str | Path, model_name: str | None = None) -> str:
    """The name clients see (`model` in responses, /v1/models, the page): never the directory's path."""
    return model_name or Path(model_dir).resolve().name


def host_name(header: str) -> str:
    """The host of a Host header, without its port: `[::1]:8000` -> `::1`, `Example.org:80` -> `example.org`."""
    h = header.strip().lower()
    if h.startswith("["):  # an IPv6 literal, bracketed (RFC 3986)
        return h[1:h.find("]")] if "]" in h else h
    return h.rpartition(":")[0] if h.count(":") == 1 else h


class HostPolicy:
    """Serves only requests whose Host header names an allowed host (400 for the others), so that a page
    on another site that rebinds its name to this address reaches nothing. `*.example.org` allows its
    subdomains. Hand-written: Starlette's TrustedHostMiddleware splits the header on ":" and so refuses
    every IPv6 host (`[::1]:8000`)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.exact = {host_name(h) for h in allowed if not h.startswith("*.")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not self.allows(host):
                from starlette.responses import PlainTextResponse

                await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def with_host_policy(app: Any, config: ServeConfig) -> Any:
    """The app behind config's Host allow-list (none when bound to every interface with no name given)."""
    allowed = config.host_allow_list()
    return app if allowed is None else HostPolicy(app, allowed)


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


SHUTDOWN_GRACE = 5  # seconds after the engine closed for the replies it ended to be written


def _close_then(engine: Any, then: Callable[[], None], grace: float = 1.0) -> None:
    """Close the engine in a thread of its own (it saves the prefix cache: never in the event loop), then,
    `grace` seconds on, `then()`: the replies it ended have their last events written by then."""
    def run() -> None:
        engine.close()
        time.sleep(grace)
        then()

    threading.Thread(target=run, name="dialogpt-shutdown", daemon=True).start()


def url(host: str, port: int) -> str:
    return "http://" + (f"[{host}]" if ":" in host else host) + f":{port}"


def serve(model_dir: str, config: ServeConfig) -> None:
    """Load the model, start the engine and serve the app with uvicorn until SIGINT / SIGTERM: uvicorn
    stops taking connections, lets in-flight replies finish for up to config.shutdown_timeout seconds (then
    cancels them; a second signal cancels them at once), then the process ends by that signal."""
    import uvicorn

    from dialogpt_onnx.runtime import load
    from dialogpt_onnx.runtime.cli import loading

    from .connections import timed_protocol
    from .engine import Engine
    from .http import create_app

    class Server(uvicorn.Server):
        """At the first signal in-flight replies get config.shutdown_timeout seconds; then (or at a second
        signal) the engine is closed, so that each unfinished reply ends the way a client can read (a 503,
        or a stream's error event and finish_reason "abort"), before uvicorn stops the process; it would
        cancel them mid-write (a 500 with a trace, streams cut without a word)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:  # a second signal of any kind: stop waiting for in-flight replies
                _close_then(engine, lambda: setattr(self, "force_exit", True))
            else:
                timer = threading.Timer(config.shutdown_timeout, _close_then, (engine, lambda: None))
                timer.daemon = True  # a server whose replies all finished in time exits at once
                timer.start()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            # here, not after run(): uvicorn re-raises the stopping signal when run() ends, and the process dies
            await asyncio.to_thread(engine.close)  # which saves the prefix cache, if asked to

    sock = listen(config.host, config.port)  # before the model loads: a taken port or a bad host is one line
    with loading(model_dir):
        model = load(model_dir, threads=config.threads)
    engine = Engine.from_config(model, config)
    if engine.prefix_cache_status:
        print(engine.prefix_cache_status, flush=True)
    try:
        name = public_name(model_dir, config.model_name)
        app = with_host_policy(create_app(engine, name, config), config)
        where = url(config.host, config.port)
        keys = "on" if config.api_keys or config.admin_keys else "off"
        log = ", access log on stdout" if config.access_log else ""
        print(f"serving {name} ({model.manifest.variant}, {model.max_length} tokens of context) on {where}: "
              f"chat page {where}/, API {where}/v1; batch {config.max_batch}, queue {config.max_queue}, "
              f"API keys {keys}{log}; Ctrl-C stops", flush=True)
        uv = uvicorn.Config(app, log_level="warning", http=timed_protocol(config.header_timeout),  # type: ignore[arg-type]
                            timeout_keep_alive=max(1, round(config.idle_timeout)),
                            # uvicorn's own deadline comes after ours: the engine is closed first (see Server)
                            timeout_graceful_shutdown=round(config.shutdown_timeout) + SHUTDOWN_GRACE)
        Server(uv).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
