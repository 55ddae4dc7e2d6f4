"""ServeConfig: every setting of the server, with its default, in one place (as vLLM's EngineArgs and
llama.cpp's common_params). The CLI's flags, the app, the engine, the process and the Ray replicas all
take one; none of them writes a default of its own."""

from __future__ import annotations

from dataclasses import dataclass

from dialogpt_onnx.runtime.checks import integer, is_number, number
from dialogpt_onnx.runtime.errors import UsageError

EVERY_INTERFACE = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServeConfig:
    # the process
    host: str = "127.0.0.1"  # address to listen on ("0.0.0.0": every interface)
    port: int = 8000
    threads: int | None = None  # onnxruntime threads (per replica with Ray; default: all CPUs, or a share)
    access_log: bool = True  # a line per API request on stdout
    # who may call, and what the app reads of a request
    model_name: str | None = None  # the name clients see (default: the model dir's base name, never its path)
    api_keys: tuple[str, ...] = ()  # when set, `Authorization: Bearer KEY` on the API; each key a tenant
    admin_keys: tuple[str, ...] = ()  # API keys that also see the process-wide statistics on /health
    allowed_hosts: tuple[str, ...] = ()  # Host headers served besides loopback names and `host`
    # A whole 1,024-token history is ~5 KB of text; 1 MiB leaves room for any client's JSON around it.
    max_body_bytes: int = 1 << 20  # 413 past it, before the rest is read
    # deadlines, in seconds
    header_timeout: float = 10.0  # to send a request's headers (then the connection is closed)
    body_timeout: float = 30.0  # to send a whole body (408): 1 MiB at 35 KB/s
    idle_timeout: float = 5.0  # an idle keep-alive connection stays open
    shutdown_timeout: float = 30.0  # in-flight replies may run after SIGTERM / Ctrl-C
    # the engine
    max_batch: int = 8  # requests decoded together
    max_queue: int = 64  # requests waiting before 429
    prefill_chunk: int = 256  # prompt tokens prefilled per engine step (a long prompt never stalls replies)
    prefix_cache_mb: float = 256.0  # chats' KV kept between turns, least recently used evicted (0: off)
    prefix_cache_file: str | None = None  # restored at start, saved at shutdown (one process only)
    share_prefix_cache: bool = False  # requests without a cache_salt share cached chats (one trusted client)
    # scale-out
    ray: bool = False
    replicas: int | None = None  # Ray Serve replicas (None: 1; needs ray)
    ray_address: str | None = None  # join this Ray cluster instead of starting a local one

    def __post_init__(self) -> None:
        for name in ("port", "max_batch", "max_queue", "prefill_chunk", "max_body_bytes"):
            integer(name, getattr(self, name), 1)
        if self.port > 65535:
            raise UsageError(f"port must be a TCP port, 1 to 65535, got {self.port}", "port")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "shutdown_timeout"):
            v = getattr(self, name)
            number(name, v, "a number of seconds > 0", is_number(v) and v > 0)
        number("prefix_cache_mb", self.prefix_cache_mb, "a number >= 0 (0 turns the cache off)",
               is_number(self.prefix_cache_mb) and self.prefix_cache_mb >= 0)
        if self.threads is not None:
            integer("threads", self.threads, 1)
        if not self.ray and (self.replicas is not None or self.ray_address is not None):
            raise UsageError("--replicas and --ray-address run on Ray Serve: add --ray", "ray")
        if self.replicas is not None:
            integer("replicas", self.replicas, 1)
        if self.prefix_cache_file is not None and (self.ray or self.prefix_cache_mb == 0):
            raise UsageError("--prefix-cache-file keeps one process's prefix cache: drop it, or drop --ray / "
                             "--prefix-cache-mb 0", "prefix_cache_file")

    @property
    def every_interface(self) -> bool:
        return self.host in EVERY_INTERFACE

    def host_allow_list(self) -> list[str] | None:
        """Host headers to serve: this machine's loopback names, the bound address and allowed_hosts. None
        (any Host) only when bound to every interface with no name given: then the operator's proxy or
        firewall decides (the CLI warns)."""
        if self.every_interface and not self.allowed_hosts:
            return None
        bound = [] if self.every_interface else [self.host]
        return sorted({*LOOPBACK_NAMES, *bound, *self.allowed_hosts})


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
DEFAULTS = ServeConfig()
