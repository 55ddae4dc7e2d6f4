"""The benchmark suite's --quick run goes through the whole pipeline (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_results_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    engines = run["models"]["tiny"]["engines"]
    assert {"pytorch-fp32", "ours-fp32", "ours-int8", "ours-int4"} <= set(engines)
    for name, e in engines.items():
        d = e["decode_ms_per_token"]
        assert d["n"] == 2 and d["min"] <= d["median"] <= d["max"], name
        assert set(e["first_token_ms"]) == {"16", "64"} and e["size_mb"] > 0 and e["peak_rss_mb"] > 0
        assert 0.0 <= e["greedy_agreement_vs_pytorch_fp32"] <= 1.0
    # fp32 engines decode the same greedy tokens as PyTorch fp32
    assert engines["ours-fp32"]["greedy_agreement_vs_pytorch_fp32"] == 1.0
    assert run["machine"]["cores"] and "onnxruntime" in run["machine"]["versions"]
    report = (out / "report.md").read_text()
    assert "× vs PyTorch fp32" in report and "## Targets" in report
    for png in ("decode_ms_per_token.png", "first_token_tiny.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    for name in {"llama.cpp-Q8_0", "optimum-fp32", "ctranslate2-int8"} - set(engines):
        assert f"skipping {name}" in proc.stdout or name in proc.stderr


def test_serve_load_test_quick_run(tmp_path, hf_dir):
    out = tmp_path / "serve"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serve", str(hf_dir), "--quick", "--clients", "1,3",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    levels = run["models"][hf_dir.name]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 3]
    for lv in levels:  # every streamed reply arrived whole: fixed length, no errors
        assert lv["errors"] == 0 and lv["requests"] == 2 * lv["clients"]
        assert lv["tokens"] == lv["requests"] * run["params"]["max_tokens"]
        assert lv["kv_reused_turns"] >= lv["clients"]  # second turns start from the first turn's KV
    steps = run["models"][hf_dir.name]["step_ms"]
    assert sorted(steps, key=int) == ["1", "3"] and all(s["median"] > 0 for s in steps.values())
    assert (out / "serve.png").is_file() and "decode step over k rows" in (out / "report.md").read_text()
