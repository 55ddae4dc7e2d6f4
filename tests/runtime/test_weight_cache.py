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

LOAD = """
import json, sys
from dialogpt_onnx import runtime
model = runtime.load(sys.argv[1])
s = model.score("Hello there, how are you?", "I am fine, thanks. And you?")
print(json.dumps({"logprobs": s.token_logprobs, "file": model.graph.ort_session._model_path}))
"""


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
