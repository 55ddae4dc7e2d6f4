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

from .config import DEFAULTS as D
from .config import ServeConfig


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
                      description="OpenAI-compatible HTTP server and chat page for an exported model (needs "
                                  "pip install 'dialogpt-onnx[serve]'); every default is serve.ServeConfig's")
    p.add_argument("model_dir")
    p.add_argument("--host", default=D.host, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=D.port, help="port to listen on")
    p.add_argument("--model-name", default=D.model_name,
                   help="the model's name for clients (default: MODEL_DIR's base name; its path is never shown)")
    p.add_argument("--max-batch", type=positive_int, default=D.max_batch, help="requests decoded together")
    p.add_argument("--max-queue", type=positive_int, default=D.max_queue, help="requests waiting before 429")
    p.add_argument("--prefix-cache-mb", type=finite_float, default=D.prefix_cache_mb,
                   help="memory for chats' KV between turns; least recently used chats are evicted (0: off)")
    p.add_argument("--prefix-cache-file", default=D.prefix_cache_file, metavar="FILE",
                   help="keep the prefix cache across restarts: restored from FILE at start, saved there at "
                        "shutdown (it holds the cached chats: readable by its owner only; not with --ray)")
    p.add_argument("--api-key", action="append", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on the API (repeatable; also --api-key-file and "
                        "$DIALOGPT_API_KEY); each key's requests share cached chats only with each other")
    p.add_argument("--api-key-file", default=None, help="a file of API keys, one per line")
    p.add_argument("--admin-key", action="append", default=None, metavar="KEY",
                   help="an API key that also sees the process-wide statistics on /health (repeatable; also "
                        "$DIALOGPT_ADMIN_KEY); other keys see their own, the public none")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a Host header to serve besides this machine's loopback names and --host (repeatable; "
                        "*.example.org for its subdomains; others get 400, so a rebinding site reaches nothing)")
    p.add_argument("--max-body-kb", type=positive_int, default=D.max_body_bytes // 1024,
                   help="largest request body read (413 past it, before the rest is read)")
    p.add_argument("--header-timeout", type=positive_float, default=D.header_timeout,
                   help="seconds a client has to send a request's headers (then the connection is closed)")
    p.add_argument("--body-timeout", type=positive_float, default=D.body_timeout,
                   help="seconds a client has to send a request's body (then 408)")
    p.add_argument("--idle-timeout", type=positive_float, default=D.idle_timeout,
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--shutdown-timeout", type=positive_float, default=D.shutdown_timeout,
                   help="seconds in-flight replies may run after SIGTERM / Ctrl-C before they are cancelled "
                        "(a second signal cancels them at once)")
    p.add_argument("--no-access-log", action="store_true", help="no line per API request on stdout")
    p.add_argument("--shared-prefix-cache", action="store_true",
                   help="let requests without a cache_salt reuse each other's cached chats: faster for one "
                        "trusted client, but any client can then tell what another said (by the reply's speed)")
    p.add_argument("--threads", type=positive_int, default=D.threads,
                   help="onnxruntime threads (per replica with --ray; default: all CPUs, or a replica's share)")
    p.add_argument("--ray", action="store_true", help="run replicas on Ray Serve (needs pip install "
                                                      "'dialogpt-onnx[ray]')")
    p.add_argument("--replicas", type=positive_int, default=D.replicas,
                   help="Ray Serve replicas (default 1; needs --ray)")
    p.add_argument("--ray-address", default=D.ray_address,
                   help="join this Ray cluster (e.g. auto, after `ray start`) instead of starting a local one")
    return p.parse_args(argv)


def config_of(a: argparse.Namespace) -> ServeConfig:
    """The flags as the server's one config (checked there: a bad combination is one line naming the flag)."""
    from .auth import ADMIN_ENV_VAR, ENV_VAR, read_keys

    return ServeConfig(
        host=a.host, port=a.port, threads=a.threads, access_log=not a.no_access_log, model_name=a.model_name,
        api_keys=tuple(read_keys(a.api_key, a.api_key_file, os.environ.get(ENV_VAR))),
        admin_keys=tuple(read_keys(a.admin_key, None, os.environ.get(ADMIN_ENV_VAR))),
        allowed_hosts=tuple(a.allowed_host or ()), max_body_bytes=a.max_body_kb * 1024,
        header_timeout=a.header_timeout, body_timeout=a.body_timeout, idle_timeout=a.idle_timeout,
        shutdown_timeout=a.shutdown_timeout, max_batch=a.max_batch, max_queue=a.max_queue,
        prefix_cache_mb=a.prefix_cache_mb, prefix_cache_file=a.prefix_cache_file,
        share_prefix_cache=a.shared_prefix_cache, ray=a.ray, replicas=a.replicas, ray_address=a.ray_address)


def run(a: argparse.Namespace) -> None:
    config = config_of(a)
    from dialogpt_onnx.runtime.manifest import read_manifest

    read_manifest(Path(a.model_dir), verify=False)  # a wrong dir: one line, before any server or cluster
    require_extra("serve", "starlette", "uvicorn", "prometheus_client")
    if config.every_interface and not config.allowed_hosts:
        print("warning: bound to every interface with no --allowed-host: any Host header is served; name the "
              "server's public names with --allowed-host (or put it behind a proxy that does)", file=sys.stderr)
    if config.share_prefix_cache:
        print("warning: --shared-prefix-cache: clients without a cache_salt share cached chats; one can tell "
              "what another said from how fast a guess is answered. Use it for one trusted client only.",
              file=sys.stderr)
    if not config.ray:
        from .process import serve

        serve(a.model_dir, config)
        return
    require_extra("ray", "ray")
    from .ray_serve import serve_on_ray

    serve_on_ray(a.model_dir, config)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    return run_command(lambda: run(a))


if __name__ == "__main__":
    sys.exit(main())
