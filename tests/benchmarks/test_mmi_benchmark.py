"""python -m benchmarks.studies.mmi: the MMI benchmark's quick run writes its results, report and plot."""

from __future__ import annotations

import pytest
from checkpoints import ROOT

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

def test_mmi_benchmark_quick(exported, backward_dir, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "mmi"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.mmi", str(exported("int8")), "--backward",
                           str(backward_dir), "--quick", "--candidates", "2,4", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1500:]
    run = json.loads((out / "results.json").read_text())
    assert list(run["systems"]) == ["greedy", "top-k 50", "MMI N=2", "MMI N=4"]
    for r in run["systems"].values():
        assert 0 < r["distinct_2"] <= 1 and r["bleu_2"] >= 0 and r["ms_per_reply"]["median"] > 0
    assert "BLEU-2" in (out / "report.md").read_text() and (out / "mmi.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "benchmarks.studies.mmi", str(exported("int8")), "--backward",
                          str(backward_dir), "--candidates", "0"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --candidates")
