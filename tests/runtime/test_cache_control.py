"""The weight cache stays within its cap (least recently used entries go first, an entry over the cap is not
kept), never touches what it did not write, says what it kept, and `dialogpt-onnx cache` lists and clears it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from checkpoints import ROOT
from processes import LOAD_AND_SCORE as LOAD

from dialogpt_onnx.runtime import weight_cache


def load(model_dir, cache, cap_mb: float | None = None) -> dict:
    env = {**os.environ, "DIALOGPT_ONNX_CACHE": str(cache)}
    if cap_mb is not None:
        env["DIALOGPT_ONNX_CACHE_MB"] = str(cap_mb)
    proc = subprocess.run([sys.executable, "-c", LOAD, str(model_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def cache_command(cache, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx", "cache", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DIALOGPT_ONNX_CACHE": str(cache)})


def sources(cache) -> list[str]:
    return sorted(e.source for e in weight_cache.entries(cache))


def test_least_recently_used_entries_go_past_the_cap(exported, tmp_path):
    cache = tmp_path / "cache"
    a, b, c = (exported(v) for v in ("int8", "int4", "fp32"))
    off = load(a, "off")
    load(a, cache)
    time.sleep(0.05)
    load(b, cache)
    sizes = {e.source: e.bytes for e in weight_cache.entries(cache)}
    assert len(sizes) == 2 and all(size > 0 for size in sizes.values())
    time.sleep(0.05)
    assert load(a, cache)["logprobs"] == off["logprobs"]  # a cache hit: `a` is now the most recently used
    (cache / "notes.txt").write_text("mine")  # not an entry: never touched
    (cache / "foreign").mkdir()
    load(c, tmp_path / "sizing")  # how large `c`'s entry is
    c_bytes = weight_cache.entries(tmp_path / "sizing")[0].bytes
    # room for `a` and the new `c` only: `b`, the least recently used, goes
    load(c, cache, cap_mb=(sizes[str(a / "model.onnx")] + c_bytes + sizes[str(b / "model.onnx")] // 2) / 1e6)
    assert sources(cache) == sorted([str(a / "model.onnx"), str(c / "model.onnx")])
    assert (cache / "notes.txt").read_text() == "mine" and (cache / "foreign").is_dir()
    listed = cache_command(cache)
    assert listed.returncode == 0 and "2 entries" in listed.stdout and str(c / "model.onnx") in listed.stdout
    cleared = cache_command(cache, "clear")
    assert cleared.returncode == 0 and "removed 2 entries" in cleared.stdout
    assert weight_cache.entries(cache) == [] and (cache / "notes.txt").exists() and (cache / "foreign").is_dir()


def test_an_entry_over_the_cap_is_not_kept_and_the_load_goes_on(exported, tmp_path):
    cache = tmp_path / "cache"
    got = load(exported("int8"), cache, cap_mb=0.001)
    assert got["file"].endswith("model.onnx") and str(cache) not in got["file"]
    assert weight_cache.entries(cache) == [] and not list(cache.glob(".building-*"))
    assert load(exported("int8"), "off")["logprobs"] == got["logprobs"]


def test_what_was_kept_is_said_on_a_terminal(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    tmp = root / ".building-x"
    tmp.mkdir(mode=0o700)
    (tmp / weight_cache.GRAPH).write_bytes(b"g" * 1000)
    (tmp / weight_cache.DATA).write_bytes(b"d" * 2_000_000)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    weight_cache.publish(tmp, root / "entry", tmp_path / "model.onnx")
    err = capsys.readouterr().err.strip()
    assert err.startswith("weight cache: kept a pre-packed copy of") and "(2 MB)" in err
    assert "the cache holds 2 of 4096 MB" in err and "`dialogpt-onnx cache`" in err and len(err.splitlines()) == 1


def test_the_cache_command_when_the_cache_is_off():
    out = cache_command("off")
    assert out.returncode == 0 and "off" in out.stdout
