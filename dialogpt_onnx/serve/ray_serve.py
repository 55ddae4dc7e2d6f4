"""Scale-out on Ray Serve (`pip install .[ray]`): N replicas of the engine and its HTTP API behind Ray's
HTTP proxy, on one machine or a cluster.

    dialogpt-onnx serve MODEL_DIR --ray --replicas 2 [--ray-address auto] [--host ...] [--port ...]

Each replica is one process holding one model and one batching engine (create_app: the same routes,
errors and session cache as the single-process server). Ray routes each request to a replica; a chat's
KV stays in the replica that served its last turn, so on another replica the turn is recomputed (same
reply). On a cluster, MODEL_DIR must exist at the same path on every node.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from dialogpt_onnx.runtime.errors import UsageError

APP_NAME = "dialogpt"


@dataclass(frozen=True)
class ReplicaSettings:
    model_dir: str
    max_batch: int = 8
    max_queue: int = 64
    prefix_cache_mb: float = 256
    threads: int | None = None  # onnxruntime threads per replica (default: its share of the CPUs)
    model_name: str | None = None  # what clients see (default: the directory's base name)
    share_prefix_cache: bool = False  # requests without a cache_salt share cached chats (one trusted client)
    api_keys: tuple[str, ...] = ()  # required on the API when given
    max_body_bytes: int = 1 << 20  # request bodies past it: 413
    body_timeout: float = 30.0  # seconds to send a body: 408 past it
    allowed_hosts: tuple[str, ...] | None = None  # Host headers served (None: any; see serve.http.host_allow_list)


def build_replica_app(settings: ReplicaSettings):
    """The ASGI app of one replica: its own model and engine, closed when Ray stops the replica."""
    from dialogpt_onnx.runtime import load

    from .auth import ApiKeys
    from .engine import Engine
    from .http import create_app, public_name

    model = load(settings.model_dir, threads=settings.threads)
    engine = Engine(model, max_batch=settings.max_batch, max_queue=settings.max_queue,
                    prefix_cache_mb=settings.prefix_cache_mb, share_prefix_cache=settings.share_prefix_cache)
    hosts = list(settings.allowed_hosts) if settings.allowed_hosts is not None else None
    return create_app(engine, model_name=public_name(settings.model_dir, settings.model_name), close_engine=True,
                      api_keys=ApiKeys(settings.api_keys), max_body_bytes=settings.max_body_bytes,
                      allowed_hosts=hosts, body_timeout=settings.body_timeout)


def application(settings: ReplicaSettings, replicas: int, cpus_per_replica: float):
    """The Ray Serve application (for `serve.run`, or a `serve run` config's import path builder)."""
    from ray import serve

    def build():  # runs in each replica's process
        return build_replica_app(settings)

    # Ray's own queues are bounded too: the engine answers 429 past max_queue, Ray 503 past its bound.
    deployment = serve.deployment(
        serve.ingress(build)(), name="DialogServer", num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=settings.max_batch + settings.max_queue, max_queued_requests=settings.max_queue)
    return deployment.bind()


def serve_on_ray(settings: ReplicaSettings, replicas: int, host: str = "127.0.0.1", port: int = 8000,
                 address: str | None = None) -> None:
    """Start (or join, with address) a Ray cluster, run the replicas, block until SIGINT / SIGTERM."""
    import ray
    from ray import serve

    settings = ReplicaSettings(**{**asdict(settings), "model_dir": str(Path(settings.model_dir).resolve())})
    ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="warning")
    per_replica = max(float(ray.cluster_resources().get("CPU", 1)) / replicas, 0.1)
    if settings.threads is None:
        settings = ReplicaSettings(**{**asdict(settings), "threads": max(int(per_replica), 1)})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(application(settings, replicas, per_replica), name=APP_NAME, route_prefix="/")
        except RuntimeError as e:  # a replica failed to start: its own log (above) says why
            raise UsageError(f"Ray Serve could not start the replicas ({str(e).splitlines()[0]}): see the "
                             "replica log above") from None
        print(f"serving {settings.model_dir} on http://{host}:{port} with {replicas} Ray Serve replicas "
              "(Ctrl-C stops)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()

