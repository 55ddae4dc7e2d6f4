"""pyproject's onnxruntime floor is true: the oldest release it names runs the default exports token for token
(in a side venv with that release), and one release older is refused in one line at load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import ROOT

from dialogpt_onnx.runtime import ort_floor
from dialogpt_onnx.runtime.manifest import read_manifest

pytestmark = pytest.mark.slow  # installs two onnxruntime releases from the package index

PROBE = """
import json, sys
from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.errors import ModelDirError
try:
    m = runtime.load(sys.argv[1], weight_cache=False)
except ModelDirError as e:
    print(json.dumps({"refused": str(e)}))
    raise SystemExit
prompts = [m.encode_turn(t) for t in ("Hi! Do you like music?", "Who is your favorite band?", "I like jazz more.")]
out = {"alone": [m.generate(p, max_new_tokens=16).ids for p in prompts],
       "batch": [g.ids for g in m.generate(prompts, max_new_tokens=16)]}
chat = m.chat(greedy=True, max_new_tokens=12)
out["chat"] = [chat.send(t) for t in ("Hi! Do you like music?", "Who is your favorite band?")]
print(json.dumps(out))
"""


def declared_floor() -> str:
    (floor,) = re.findall(r'^\s*"onnxruntime>=([\d.]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    return floor


def side_venv(tmp: Path, version: str) -> Path:
    venv = tmp / f"ort-{version}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"onnxruntime=={version}",
                          "tokenizers", "numpy<2"], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv / "bin" / "python"


def probe(python: Path | str, model_dir: Path) -> dict:
    # the package from this checkout, with only the runtime's dependencies installed beside it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIALOGPT_ONNX_CACHE": "off"}
    r = subprocess.run([str(python), "-c", PROBE, str(model_dir)], capture_output=True, text=True, timeout=300,
                       env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_the_declared_floor_runs_the_exports_token_for_token_and_the_release_before_is_refused(exported, tmp_path):
    floor = declared_floor()
    dirs = {v: exported(v) for v in ("fp32", "int8")}
    needed = {v: read_manifest(d).onnxruntime_needed() for v, d in dirs.items()}
    assert needed == {"fp32": ort_floor.OP_FLOORS["GroupQueryAttention"],
                      "int8": ort_floor.OP_FLOORS["GatherBlockQuantized"]}
    assert ort_floor.version_tuple(floor) == ort_floor.version_tuple(needed["int8"])  # the default export's
    old = side_venv(tmp_path, floor)
    for variant, d in dirs.items():
        assert probe(old, d) == probe(sys.executable, d), variant
    major, minor, *_ = ort_floor.version_tuple(floor)
    older = side_venv(tmp_path, f"{major}.{minor - 1}.0")
    refused = probe(older, dirs["int8"])["refused"]
    assert refused == (f"{dirs['int8'] / 'model.onnx'} needs onnxruntime >= {needed['int8']}, this is "
                       f"{major}.{minor - 1}.0: pip install -U 'onnxruntime>={needed['int8']}'")
