"""Prometheus metrics of one server (prometheus-client), in a registry of its own: queue depth, running
rows, tokens generated, time to first token, time per output token, responses by status. Aggregates
only: nothing in them is per client or per chat."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .engine import Engine, Request

# Seconds: a 1-token reply on a warm engine takes ~2 ms; a 1,000-token prompt on DialoGPT-medium ~1 s.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("dialogpt_queue_depth", "Requests waiting for a row", registry=r).set_function(
            lambda: engine.stats()["waiting"])
        Gauge("dialogpt_running_rows", "Rows generating now", registry=r).set_function(lambda: engine.running)
        Gauge("dialogpt_engine_alive", "1 while the engine takes work", registry=r).set_function(
            lambda: 1 if engine.alive else 0)
        self.tokens = Counter("dialogpt_generated_tokens", "Tokens generated (rate() gives tokens/s)", registry=r)
        self.prompt_tokens = Counter("dialogpt_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.ttft = Histogram("dialogpt_time_to_first_token_seconds", "From admission to the first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("dialogpt_time_per_output_token_seconds", "Between a reply's tokens, averaged "
                              "over the reply", buckets=TPOT_BUCKETS, registry=r)
        self.responses = Counter("dialogpt_responses", "HTTP responses of the API, by status", ["status"],
                                 registry=r)

    def reply_done(self, req: Request) -> None:
        """A finished (or cancelled) request's timings and token count."""
        n = req.emitted
        self.tokens.inc(n)
        self.prompt_tokens.inc(len(req.prompt))
        if req.first_token_at is not None:
            self.ttft.observe(req.first_token_at - req.submitted_at)
            if n > 1 and req.last_token_at is not None:
                self.tpot.observe((req.last_token_at - req.first_token_at) / (n - 1))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)



class CountResponses:
    """Pure ASGI middleware (Starlette's Middleware(CountResponses, metrics=...)): the API's responses by
    status, streams included."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.responses.labels(str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, watch)
