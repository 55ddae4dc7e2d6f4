"""The weight cache (runtime.weight_cache): the first load on a machine writes the pre-packed weights, later
loads map them and give the same logits; a damaged entry is rebuilt; a cache that cannot be written, or
turned off, changes nothing but speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from checkpoints import ROOT
from processes import LOAD_AND_SCORE as LOAD


def load(model_dir, cache) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(model_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DIALOGPT_ONNX_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("variant", ["int8", "int4"])
def test_later_loads_map_the_entry_the_first_wrote(exported, tmp_path, variant):
    off = load(exported(variant), "off")
    assert off["file"].endswith(f"{os.sep}model.onnx") and str(tmp_path) not in off["file"]
    first = load(exported(variant), tmp_path / "cache")
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "model.onnx.data").stat().st_size > 0
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".building-")]
    again = load(exported(variant), tmp_path / "cache")
    assert first["file"] == again["file"] == str(entries[0] / "model.onnx")
    assert again["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5)


def test_a_damaged_entry_is_rebuilt_and_an_unwritable_cache_is_skipped(exported, tmp_path):
    off = load(exported("int8"), "off")
    load(exported("int8"), tmp_path / "cache")
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    data = entry / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated: sizes no longer match
    rebuilt = load(exported("int8"), tmp_path / "cache")
    assert rebuilt["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5)
    assert data.stat().st_size == json.loads((entry / "entry.json").read_text())["sizes"]["model.onnx.data"]
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert load(exported("int8"), blocked)["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5)
    assert blocked.read_text() == "not a directory"


def _plant(cache, exported) -> tuple[object, object]:
    """What an attacker who can write the cache does: the int8 model's entry replaced by another model's
    files (the int4 export's), with a record whose sizes and digests match them. Returns (entry, int4's)."""
    import hashlib
    import shutil

    load(exported("int8"), cache)
    load(exported("int4"), cache)
    entries = sorted((p for p in cache.iterdir() if not p.name.startswith(".")),
                     key=lambda p: json.loads((p / "entry.json").read_text())["source"])
    int4, int8 = (e for e in entries if "int4" in json.loads((e / "entry.json").read_text())["source"]), \
        (e for e in entries if "int8" in json.loads((e / "entry.json").read_text())["source"])
    int4, int8 = next(int4), next(int8)
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(int4 / name, int8 / name)
    record = json.loads((int8 / "entry.json").read_text())
    record["sizes"] = {n: (int8 / n).stat().st_size for n in record["sizes"]}
    record["sha256"] = {n: hashlib.sha256((int8 / n).read_bytes()).hexdigest() for n in record["sizes"]}
    (int8 / "entry.json").write_text(json.dumps(record))
    return int8, int4


def load_verbose(model_dir, cache) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(model_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DIALOGPT_ONNX_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("how", ["another-owner", "world-writable", "symlink"])
def test_an_entry_someone_else_could_have_written_is_never_loaded(exported, tmp_path, how):
    """A planted entry (another model's weights, with a record to match) is refused when another user owns
    it, when others may write it, or when it is a symlink: the replies are the model's own, and one
    warning line says why (today's cache loaded it: every reply was the planted model's)."""
    off = load(exported("int8"), "off")
    cache = tmp_path / "cache"
    entry, _ = _plant(cache, exported)
    if how == "another-owner":
        for p in (entry, *entry.iterdir()):
            os.chown(p, 12345, 12345)
    elif how == "world-writable":
        (entry / "model.onnx.data").chmod(0o666)
    else:
        import shutil

        real = tmp_path / "planted"
        shutil.move(entry, real)
        entry.symlink_to(real, target_is_directory=True)
    got, err = load_verbose(exported("int8"), cache)
    assert got["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5)
    assert str(cache) not in got["file"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: weight cache not used: ") and str(entry) in lines[0]


def test_verify_hashes_the_entry_and_a_shared_cache_dir_is_refused(exported, tmp_path):
    """With verify (the default) an entry whose bytes changed since this user's load recorded their
    sha256, sizes unchanged, is rebuilt; a cache directory others may write is not used at all."""
    off = load(exported("int8"), "off")
    cache = tmp_path / "cache"
    load(exported("int8"), cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    data = entry / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = bytes(4096)  # the same size, other weights
    data.write_bytes(bytes(raw))
    got, err = load_verbose(exported("int8"), cache)
    assert got["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5) and err == ""
    assert data.read_bytes() != bytes(raw)  # rebuilt
    assert all(not p.stat().st_mode & 0o077 for p in (entry, *entry.iterdir()))  # private to its user
    cache.chmod(0o777)
    got, err = load_verbose(exported("int8"), cache)
    assert got["logprobs"] == pytest.approx(off["logprobs"], abs=1e-5) and str(cache) not in got["file"]
    assert err.strip().startswith("warning: weight cache not used: ") and "writable by other users" in err
