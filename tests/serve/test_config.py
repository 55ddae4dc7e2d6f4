"""ServeConfig owns every server default: the CLI's flags, the engine and the app take theirs from it,
and it refuses a bad setting naming it. The Host policy reads IPv6 hosts."""

from __future__ import annotations

import inspect

import pytest

from dialogpt_onnx.runtime.errors import UsageError
from dialogpt_onnx.serve.config import DEFAULTS, ServeConfig
from dialogpt_onnx.serve.engine import Engine
from dialogpt_onnx.serve.http import create_app
from dialogpt_onnx.serve.process import HostPolicy, host_name


def test_every_path_takes_its_defaults_from_serve_config(monkeypatch):
    from dialogpt_onnx.serve.__main__ import config_of, parse

    monkeypatch.delenv("DIALOGPT_API_KEY", raising=False)
    assert config_of(parse(["some/model"])) == DEFAULTS  # no flag given: exactly the defaults
    engine = inspect.signature(Engine.__init__).parameters
    for name in ("max_batch", "max_queue", "prefill_chunk", "prefix_cache_mb", "share_prefix_cache",
                 "prefix_cache_file"):
        assert engine[name].default == getattr(DEFAULTS, name), name
    assert inspect.signature(create_app).parameters["config"].default is DEFAULTS


@pytest.mark.parametrize(("settings", "arg"), [
    ({"port": 0}, "port"), ({"port": 70000}, "port"), ({"max_batch": 0}, "max_batch"),
    ({"max_queue": 1.5}, "max_queue"), ({"body_timeout": -1}, "body_timeout"),
    ({"shutdown_timeout": float("inf")}, "shutdown_timeout"), ({"prefix_cache_mb": -1}, "prefix_cache_mb"),
    ({"threads": 0}, "threads"), ({"replicas": 2}, "ray"), ({"ray_address": "auto"}, "ray"),
    ({"ray": True, "replicas": 0}, "replicas"), ({"prefix_cache_file": "c.npz", "ray": True}, "prefix_cache_file"),
    ({"prefix_cache_file": "c.npz", "prefix_cache_mb": 0}, "prefix_cache_file")])
def test_a_bad_setting_is_refused_naming_it(settings, arg):
    with pytest.raises(UsageError) as e:
        ServeConfig(**settings)
    assert e.value.arg == arg, str(e.value)


def test_host_headers_with_ipv6_and_ports():
    assert [host_name(h) for h in ("[::1]:8000", "[::1]", "Example.ORG:443", "localhost", "127.0.0.1:80")] == [
        "::1", "::1", "example.org", "localhost", "127.0.0.1"]
    policy = HostPolicy(None, ServeConfig(host="::1", allowed_hosts=("*.example.org",)).host_allow_list() or [])
    assert policy.allows("[::1]:8000") and policy.allows("chat.example.org") and policy.allows("localhost:8000")
    assert not policy.allows("[::2]:8000") and not policy.allows("example.org.evil") and not policy.allows("")
