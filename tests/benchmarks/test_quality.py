"""The fidelity report's --quick run on the bundled model goes through every measurement."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from checkpoints import ROOT

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

def test_quick_fidelity_report(tmp_path):
    out = tmp_path / "quality"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    res = run["results"]
    assert set(res) == {"pytorch-fp32", "onnx-fp32", "int8", "int4"}
    ref = res["pytorch-fp32"]["reply_perplexity"]
    # the ONNX fp32 model computes PyTorch's numbers: same perplexity, same greedy replies
    assert abs(res["onnx-fp32"]["reply_perplexity"] / ref - 1) < 1e-4
    assert res["onnx-fp32"]["token_agreement"] == res["onnx-fp32"]["identical_replies"] == 1.0
    for name in ("onnx-fp32", "int8"):  # row-independent: batch and cache never change a reply
        assert res[name]["batch_invariance"] == 1.0, name
        assert res[name]["cache_invariance"]["chats_equal"] == 1.0, name
    for name in ("int8", "int4"):
        r = res[name]
        assert 1 < r["reply_perplexity"] < 2 * ref and 0 <= r["token_agreement"] <= 1, name
        assert r["size_mb"] < res["onnx-fp32"]["size_mb"], name
        for mode in ("greedy", "top_k", "top_p"):
            assert 0 < r["diversity"][mode]["distinct_2"] <= 1, (name, mode)
        assert r["decode_ms_per_token"]["n"] == run["params"]["speed_repeats"]
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "int8 token agreement" in report and run["machine"]["flags"] is not None
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_variant_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--variants", "int9", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown variant(s) int9")
    assert "Traceback" not in proc.stderr
