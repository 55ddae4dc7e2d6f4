"""`dialogpt-onnx web`: what it writes, and what it refuses in one line (never another's files)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from checkpoints import ROOT

from dialogpt_onnx.web.site import ORT_WEB_FILES


@pytest.fixture
def ort_web(tmp_path):
    """Stand-ins for onnxruntime-web's three files (the real ones are tested in Chromium)."""
    d = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    d.mkdir(parents=True)
    for f in ORT_WEB_FILES:
        (d / f).write_text(f"// {f}\n")
    return tmp_path


def web(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx", "web", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_site_holds_the_page_the_runtime_the_model_and_onnxruntime_web(exported, ort_web, tmp_path):
    out = tmp_path / "site"
    r = web(str(exported("int8")), str(out), "--onnxruntime-web", str(ort_web))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".dialogpt-web", "dialogpt.mjs", "index.html", "manifest.json",
                                                     "model.onnx", "ort", "tokenizer.json"]
    assert (out / "model.onnx").read_bytes() == (exported("int8") / "model.onnx").read_bytes()
    assert sorted(p.name for p in (out / "ort").iterdir()) == sorted(ORT_WEB_FILES)
    again = web(str(exported("int8")), str(out), "--onnxruntime-web", str(ort_web))
    assert again.returncode == 2 and again.stderr.strip().endswith("add --overwrite to replace it"), again.stderr
    assert web(str(exported("int8")), str(out), "--onnxruntime-web", str(ort_web), "--overwrite").returncode == 0


def test_refusals_are_one_line(exported, ort_web, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    cases = [
        ((str(exported("int8")), str(theirs), "--onnxruntime-web", str(ort_web)), "was not written by"),
        ((str(exported("int8")), str(tmp_path / "a"), "--onnxruntime-web", str(tmp_path / "nothing")),
         "holds no ort.wasm.min.mjs"),
        ((str(tmp_path / "no-model"), str(tmp_path / "b"), "--onnxruntime-web", str(ort_web)), "no-model"),
    ]
    for args, says in cases:
        r = web(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (args, r.stderr)
    assert (theirs / "notes.txt").read_text() == "mine" and sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
