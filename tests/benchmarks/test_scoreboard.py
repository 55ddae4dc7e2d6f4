"""The fidelity scoreboard: its KL divergence is llama.cpp's, and its quick run (the bundled model, ours beside
CTranslate2) measures every engine through the same harness."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from checkpoints import ROOT

from benchmarks.scoreboard import compare

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

def test_kl_divergence_top1_and_nll_per_token():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 10))
    same = compare(ref, ref + 5.0, [1, 2, 3])  # a shift of every logit is the same distribution
    assert np.allclose(same["kld"], 0, atol=1e-12) and same["same_top1"].all()
    got = ref.copy()
    got[1, ref[1].argmax()] -= 20  # row 1's top token made unlikely
    padded = np.concatenate([got, np.full((3, 2), -1e9)], axis=1)  # a converter's padded vocabulary
    d = compare(ref, padded, [1, 2, 3])
    p = np.exp(ref[1] - ref[1].max())
    p /= p.sum()
    q = np.exp(got[1] - got[1].max())
    q /= q.sum()
    assert np.isclose(d["kld"][1], float((p * np.log(p / q)).sum()), rtol=1e-9) and d["kld"][1] > 0
    assert list(d["same_top1"]) == [True, False, True] and d["kld"][0] < 1e-12
    assert np.isclose(d["nll"][2], -np.log(np.exp(ref[2, 3]) / np.exp(ref[2]).sum()), rtol=1e-6)


def test_quick_scoreboard(tmp_path):
    out = tmp_path / "board"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scoreboard", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    res = run["results"]
    assert {"pytorch-fp32", "ours-fp32", "ours-int8", "ctranslate2-int8"} <= set(res) | set(run["failed"])
    fp32, ref = res["ours-fp32"], res["pytorch-fp32"]
    # ours fp32 is PyTorch's model: the same greedy replies and, token by token, the same distributions
    assert fp32["token_agreement"] == fp32["identical_replies"] == fp32["same_top1"] == 1.0
    assert fp32["mean_kld"] < 1e-6 and abs(fp32["reply_perplexity"] / ref["reply_perplexity"] - 1) < 1e-4
    for name in ("ours-int8", "ctranslate2-int8"):
        if name not in res:  # a peer not installed is named, not measured
            assert run["failed"][name] == "not installed"
            continue
        r = res[name]
        assert 0 < r["mean_kld"] < 0.05 and r["p99_kld"] >= r["mean_kld"] and 0.5 < r["same_top1"] <= 1, name
        assert r["size_mb"] < fp32["size_mb"] and r["decode_ms_per_token"]["n"] == run["params"]["contexts"], name
    assert res["ours-int8"]["scored_tokens"] == ref["scored_tokens"] > 0
    report = (out / "report.md").read_text()
    assert "## Goals" in report and "ours-int8 greedy agreement" in report and "flags:" in report
    assert (out / "scoreboard.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_engine_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scoreboard", "--engines", "ours-int9", "--out",
                           str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown engines ours-int9" in proc.stderr and "Traceback" not in proc.stderr
