"""CLI: dialogpt-onnx serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--model-name NAME] [--max-batch 8]
                        [--max-queue 64] [--prefix-cache-mb 256] [--threads N] [--ray [--replicas N] [--ray-address A]]

Exit codes: 0 stopped, 2 a user error (one line on stderr), 3 an internal error (a bug: trace shown);
SIGTERM / Ctrl-C: in-flight replies finish (for up to --shutdown-timeout seconds, or until a second signal),
then the process ends by that signal (143 / 130).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dialogpt_onnx.runtime.cli import OneLineParser, finite_float, positive_int, require_extra, run_command
from dialogpt_onnx.runtime.errors import UsageError


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def port_number(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, got {port}")
    return port


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="dialogpt-onnx serve", examples=(
        "dialogpt-onnx serve models/chat-8x256-int8                      # http://127.0.0.1:8000/",
        "dialogpt-onnx serve MODEL_DIR --host 0.0.0.0 --allowed-host chat.example.org --api-key-file keys.txt",
        "dialogpt-onnx serve MODEL_DIR --ray --replicas 2"),
                      description="OpenAI-compatible HTTP server and chat page for an "
                                                          "exported model (needs the serve extra)")
    p.add_argument("model_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    p.add_argument("--model-name", default=None,
                   help="the model's name for clients (default: MODEL_DIR's base name; its path is never shown)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together")
    p.add_argument("--max-queue", type=positive_int, default=64, help="requests waiting before 429")
    p.add_argument("--prefix-cache-mb", type=finite_float, default=256,
                   help="memory for chats' KV between turns; least recently used chats are evicted (0: off)")
    p.add_argument("--prefix-cache-file", default=None, metavar="FILE",
                   help="keep the prefix cache across restarts: restored from FILE at start, saved there at "
                        "shutdown (it holds the cached chats: readable by its owner only; not with --ray)")
    p.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on the API (repeatable; also --api-key-file and "
                        "$DIALOGPT_API_KEY); each key's requests share cached chats only with each other")
    p.add_argument("--api-key-file", default=None, help="a file of API keys, one per line")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host header to serve besides this machine's loopback names and --host (repeatable; "
                        "others get 400, so a rebinding site reaches nothing)")
    p.add_argument("--max-body-kb", type=positive_int, default=1024,
                   help="largest request body read (413 past it, before the rest is read)")
    p.add_argument("--header-timeout", type=positive_float, default=10.0,
                   help="seconds a client has to send a request's headers (then the connection is closed)")
    p.add_argument("--body-timeout", type=positive_float, default=30.0,
                   help="seconds a client has to send a request's body (then 408)")
    p.add_argument("--idle-timeout", type=positive_float, default=5.0,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--shutdown-timeout", type=positive_float, default=30.0,
                   help="seconds in-flight replies may run after SIGTERM / Ctrl-C before they are cancelled "
                        "(a second signal cancels them at once)")
    p.add_argument("--no-access-log", action="store_true", help="no line per API request on stdout")
    p.add_argument("--shared-prefix-cache", action="store_true",
                   help="let requests without a cache_salt reuse each other's cached chats: faster for one "
                        "trusted client, but any client can then tell what another said (by the reply's speed)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime threads (per replica with --ray; default: all CPUs, or a replica's share)")
    p.add_argument("--ray", action="store_true", help="run replicas on Ray Serve (needs the .[ray] extra)")
    p.add_argument("--replicas", type=positive_int, default=None, help="Ray Serve replicas (default 1; needs --ray)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto, after `ray start`) instead of starting a local one")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> None:
    if not a.ray and (a.replicas is not None or a.ray_address is not None):
        raise UsageError("--replicas and --ray-address run on Ray Serve: add --ray")
    if a.prefix_cache_mb < 0:
        raise UsageError(f"--prefix-cache-mb must be >= 0 (0 turns the cache off), got {a.prefix_cache_mb:g}")
    if a.prefix_cache_file is not None and (a.ray or a.prefix_cache_mb == 0):
        raise UsageError("--prefix-cache-file keeps one process's prefix cache: drop it, or drop --ray / "
                         "--prefix-cache-mb 0", "prefix_cache_file")
    from dialogpt_onnx.runtime.manifest import read_manifest

    from .auth import ENV_VAR, read_keys

    keys = read_keys(a.api_key, a.api_key_file, os.environ.get(ENV_VAR))

    read_manifest(Path(a.model_dir), verify=False)  # a wrong dir: one line, before any server or cluster
    require_extra("serve", "starlette", "uvicorn", "prometheus_client")
    from .http import Deadlines, serve

    if a.host in ("0.0.0.0", "::") and not a.allowed_host:
        print("warning: bound to every interface with no --allowed-host: any Host header is served; name the "
              "server's public names with --allowed-host (or put it behind a proxy that does)", file=sys.stderr)
    if a.shared_prefix_cache:
        print("warning: --shared-prefix-cache: clients without a cache_salt share cached chats; one can tell "
              "what another said from how fast a guess is answered. Use it for one trusted client only.",
              file=sys.stderr)
    if not a.ray:
        serve(a.model_dir, host=a.host, port=a.port, max_batch=a.max_batch, max_queue=a.max_queue,
              prefix_cache_mb=a.prefix_cache_mb, threads=a.threads, model_name=a.model_name,
              share_prefix_cache=a.shared_prefix_cache, api_keys=keys, max_body_bytes=a.max_body_kb * 1024,
              allowed_hosts=a.allowed_host,
              deadlines=Deadlines(a.header_timeout, a.body_timeout, a.idle_timeout, a.shutdown_timeout),
              access_log=not a.no_access_log, prefix_cache_file=a.prefix_cache_file)
        return
    require_extra("ray", "ray")
    from .http import host_allow_list
    from .ray_serve import ReplicaSettings, serve_on_ray

    hosts = host_allow_list(a.host, a.allowed_host or [])
    # Ray's proxy holds the connections (its own header and idle deadlines); a replica applies the rest
    settings = ReplicaSettings(a.model_dir, max_batch=a.max_batch, max_queue=a.max_queue,
                               prefix_cache_mb=a.prefix_cache_mb, threads=a.threads, model_name=a.model_name,
                               share_prefix_cache=a.shared_prefix_cache, api_keys=tuple(keys),
                               max_body_bytes=a.max_body_kb * 1024, body_timeout=a.body_timeout,
                               allowed_hosts=None if hosts is None else tuple(hosts))
    serve_on_ray(settings, replicas=a.replicas or 1, host=a.host, port=a.port, address=a.ray_address)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    return run_command(lambda: run(a))


if __name__ == "__main__":
    sys.exit(main())
