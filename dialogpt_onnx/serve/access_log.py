"""One line per API request on stdout, as llama.cpp's server and uvicorn's access log print them, with
the time the whole response took (a stream's included; uvicorn's own line has no duration):

    127.0.0.1 "POST /v1/chat/completions" 200 412 ms
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class AccessLog:
    """Pure ASGI middleware (Starlette's Middleware(AccessLog)); the page and health probes are not logged."""

    def __init__(self, app: Any, out: TextIO | None = None) -> None:
        self.app, self.out = app, out

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            client = (scope.get("client") or ("-",))[0]
            out = self.out or sys.stdout
            print(f'{client} "{scope["method"]} {scope["path"]}" {status[0] or "-"} '
                  f"{(time.perf_counter() - t0) * 1e3:.0f} ms", file=out, flush=True)
