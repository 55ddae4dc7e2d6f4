from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from checkpoints import ROOT

from dialogpt_onnx.export import ExportOptions, export_model
from dialogpt_onnx.web.site import ORT_WEB_VERSION


@pytest.fixture(scope="session")
def bundled_exports(tmp_path_factory) -> dict:
    """The bundled trained model (models/chat-8x256) in each variant, and its portable int8 graph: a trained
    model's margins make greedy tokens comparable across onnxruntime builds (a random one's near-ties are not)."""
    out = {}
    for name in ("fp32", "int8", "int4", "portable-int8"):
        graph, _, variant = name.rpartition("-")
        d = tmp_path_factory.mktemp(f"bundled_{name}") / "model"
        export_model(ROOT / "models" / "chat-8x256", d, ExportOptions(variant=variant, graph=graph or "contrib",
                                                                       progress=False, n_prompts=1, parity_tokens=8))
        out[name] = d
    return out


@pytest.fixture(scope="session")
def npm_dir(tmp_path_factory):
    """onnxruntime-node, onnxruntime-web and transformers.js from npm, in a dir of their own."""
    npm = shutil.which("npm")
    assert npm, "npm is needed (Node 20+)"
    where = tmp_path_factory.mktemp("npm")
    (where / "package.json").write_text('{"private": true}')
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}  # its postinstall fetches CUDA files
    # the newest of each on npm
    packages = ["onnxruntime-node@1.30.0", f"onnxruntime-web@{ORT_WEB_VERSION}", "@huggingface/transformers@4.3.2"]
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", *packages], cwd=where, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return where
