"""The footprint benchmark's --quick run: every row measured in fresh processes, the 4-process and restore
sections, report and plot (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from checkpoints import ROOT

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

def test_footprint_quick_run(tmp_path):
    out = tmp_path / "footprint"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.footprint", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    chat = run["models"]["chat"]
    off = "ours int8, weight cache off (pre-packed in memory at every load)"
    assert {"ours int8", off} <= set(chat["rows"])
    for name, row in chat["rows"].items():
        assert row["load_s"]["median"] > 0 and row["ttft_s"]["median"] > 0, name
        assert row["rss_load_mb"]["median"] <= row["peak_mb"]["median"] and row["file_mb"] > 1, name
    # the default maps the weight cache's pre-packed weights: file-backed pages, where the other row holds
    # them in its own memory
    assert chat["rows"]["ours int8"]["file_reply_mb"]["median"] > chat["rows"][off]["file_reply_mb"]["median"]
    assert chat["together"]["ours int8"]["processes"] == 4 and chat["together"]["ours int8"]["pss_sum_mb"] > 0
    assert chat["restore"]["restore_s"]["median"] > 0 and chat["restore"]["history_tokens"] > 400
    report = (out / "report.md").read_text()
    assert "4 processes of one model" in report and "priming a new chat" in report
    assert (out / "footprint.png").read_bytes()[:4] == b"\x89PNG"
    if "llama.cpp Q8_0" not in chat["rows"]:
        assert "llama-cpp-python is not installed" in proc.stdout
