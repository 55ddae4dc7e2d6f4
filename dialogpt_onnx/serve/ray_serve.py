"""Scale-out on Ray Serve (`pip install .[ray]`): N replicas of the engine and its HTTP API behind Ray's
HTTP proxy, on one machine or a cluster.

    dialogpt-onnx serve MODEL_DIR --ray --replicas 2 [--ray-address auto] [--host ...] [--port ...]

Each replica is one process holding one model and one batching engine (create_app: the same routes,
errors and session cache as the single-process server). Ray routes each request to a replica; a chat's
KV stays in the replica that served its last turn, so on another replica the turn is recomputed (same
reply). On a cluster, MODEL_DIR must exist at the same path on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime.errors import UsageError

from .config import ServeConfig
from .process import public_name, url

APP_NAME = "dialogpt"
# How the server's keys reach Ray's HTTP proxy (its own process, started by Ray): their SHA-256 digests in
# the environment the local cluster inherits, never the keys themselves. Ray imports PROXY_CALLBACK there.
KEY_DIGESTS_ENV = "DIALOGPT_RAY_PROXY_KEY_DIGESTS"
PROXY_CALLBACK = "dialogpt_onnx.serve.ray_serve:proxy_middlewares"


class GuardRayRoutes:
    """ASGI middleware in Ray's proxy: its `/-/routes` (the cluster's applications and prefixes) answers only
    a request bearing one of the server's keys; `/-/healthz` stays public liveness, like the server's /health.
    Hand-written: Ray's proxy takes Starlette middlewares, and Starlette has no bearer-key check."""

    def __init__(self, app: Any, digests: tuple[str, ...] = ()) -> None:
        self.app, self.digests = app, digests

    def _allowed(self, scope: dict) -> bool:
        if not self.digests:
            return True
        headers = dict(scope.get("headers") or [])
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        digest = hashlib.sha256(given.strip().encode() if scheme.lower() == "bearer" else b"").hexdigest()
        return sum(hmac.compare_digest(digest, d) for d in self.digests) > 0  # every digest compared

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/-/routes" and not self._allowed(scope):
            body = json.dumps({"error": {"message": "a valid API key is needed: send Authorization: Bearer KEY",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """What Ray's proxy calls ($RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) for its middlewares."""
    from starlette.middleware import Middleware

    digests = tuple(d for d in os.environ.get(KEY_DIGESTS_ENV, "").split(",") if d)
    return [Middleware(GuardRayRoutes, digests=digests)]


def key_digests(config: ServeConfig) -> str:
    return ",".join(hashlib.sha256(k.encode()).hexdigest() for k in (*config.api_keys, *config.admin_keys))


def build_replica_app(model_dir: str, config: ServeConfig) -> Any:
    """The ASGI app of one replica: its own model and engine, closed when Ray stops the replica. Ray's proxy
    holds the connections (its own header and idle deadlines); a replica applies the rest of config."""
    from dialogpt_onnx.runtime import load

    from .engine import Engine
    from .http import create_app
    from .process import public_name, with_host_policy

    model = load(model_dir, threads=config.threads)
    engine = Engine.from_config(model, config)
    app = create_app(engine, public_name(model_dir, config.model_name), config, close_engine=True)
    return with_host_policy(app, config)


def application(model_dir: str, config: ServeConfig, cpus_per_replica: float) -> Any:
    """The Ray Serve application (for `serve.run`, or a `serve run` config's import path builder)."""
    from ray import serve

    def build() -> Any:  # runs in each replica's process
        return build_replica_app(model_dir, config)

    # Ray's own queues are bounded too: the engine answers 429 past max_queue, Ray 503 past its bound.
    deployment: Any = serve.deployment(
        serve.ingress(build)(), name="DialogServer", num_replicas=config.replicas or 1,
        ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=config.max_batch + config.max_queue, max_queued_requests=config.max_queue)
    return deployment.bind()


def serve_on_ray(model_dir: str, config: ServeConfig) -> None:
    """Start (or join, with config.ray_address) a Ray cluster, run the replicas, block until SIGINT / SIGTERM."""
    model_dir = str(Path(model_dir).resolve())
    replicas = config.replicas or 1
    local = config.ray_address is None
    if local:  # before Ray is imported: it reads its settings then
        # Ray's servers (GCS, raylet, workers, agents) listen on every interface whatever the node address
        # (Ray 2.60 has no bind option), and whoever reaches them with a valid token runs code here: the
        # local cluster requires a fresh token that only this process and its children hold (never the
        # shared ~/.ray/auth_token Ray writes readable to all).
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        os.environ[KEY_DIGESTS_ENV] = key_digests(config)
        os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = PROXY_CALLBACK
    else:
        print(f"warning: joining the Ray cluster at {config.ray_address}: who may reach its ports is that "
              "cluster's own setting (ray start; RAY_AUTH_MODE=token), not this server's, and so is who may read "
              "its proxy's /-/routes", file=sys.stderr)
    import ray
    from ray import serve

    ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    per_replica = max(float(ray.cluster_resources().get("CPU", 1)) / replicas, 0.1)
    if config.threads is None:
        config = replace(config, threads=max(int(per_replica), 1))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        try:
            serve.run(application(model_dir, config, per_replica), name=APP_NAME, route_prefix="/")
        except RuntimeError as e:  # a replica failed to start: its own log (above) says why
            raise UsageError(f"Ray Serve could not start the replicas ({str(e).splitlines()[0]}): see the "
                             "replica log above") from None
        print(f"serving {public_name(model_dir, config.model_name)} on {url(config.host, config.port)} with "
              f"{replicas} Ray Serve replicas (Ctrl-C stops)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
