"""The JS runtime (dialogpt_onnx/web/dialogpt.mjs) in Node over onnxruntime-node from npm: the Python runtime's
tokens and greedy replies for every variant and the portable graph, and its chat (history budget, KV across
turns). Node's own test runner does the checks (tests/web/node_parity.test.mjs); this writes what they compare
against; and transformers.js from npm, opening each export dir as it is, generates the same greedy tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from checkpoints import ROOT

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime import ort_graph

pytestmark = pytest.mark.slow  # installs onnxruntime-node from npm

TEXTS = ["Hi! Do you like music?", "I'm fine, you'll see — it's 3.14 degrees… 🙂", "a <|endoftext|> typed",
         "  spaces   and\ttabs\n", "naïve café, 日本語も"]
TURNS = ["Hi! Do you like music?", "Who is your favorite band?", "I like jazz more."]


def expectations(models: dict) -> dict:
    out: dict = {"models": {k: str(v) for k, v in models.items()}, "replies": {}}
    first = runtime.load(next(iter(models.values())))
    out["tokens"] = [[t, first.encode_turn(t)] for t in TEXTS]
    out["chat_defaults"] = json.loads((next(iter(models.values())) / "manifest.json").read_text())["chat"]
    out["spin_duration_us"] = ort_graph.SPIN_DURATION_US
    for variant, d in models.items():
        m = runtime.load(d)
        gen = []
        for t in TURNS:
            p = m.encode_turn(t)
            for options in ({"max_new_tokens": 24}, {"max_new_tokens": 24, "no_repeat_ngram_size": 3}):
                gen.append({"prompt": p, "options": options, "ids": m.generate(p, **options).ids})
        chat = m.chat(greedy=True, max_new_tokens=16)
        out["replies"][variant] = {"generate": gen, "chat": [[t, chat.send(t)] for t in TURNS * 2]}
    return out


def test_node_and_transformers_js_run_every_variant_as_python_does(bundled_exports, npm_dir, tmp_path):
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(expectations(bundled_exports), ensure_ascii=False))
    env = {**os.environ, "NPM_DIR": str(npm_dir), "EXPECTED": str(expected)}
    for test_file, per_model in (("node_parity.test.mjs", 2), ("transformers_js.test.mjs", 1)):
        r = subprocess.run(["node", "--test", "--test-reporter=tap", str(ROOT / "tests" / "web" / test_file)], env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert "# fail 0" in r.stdout and f"# pass {per_model * len(bundled_exports)}" in r.stdout, r.stdout[-2000:]


def test_the_contention_study_runs_each_setting_in_node_too(bundled_exports, npm_dir, tmp_path):
    out = tmp_path / "contention"
    r = subprocess.run([sys.executable, "-m", "benchmarks.studies.contention", str(bundled_exports["int8"]),
                        "--busy", "0", "--settings", "t2-spin30us", "--repeats", "1", "--node",
                        "--npm-dir", str(npm_dir), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "contention.json").read_text())
    assert run["settings"] == ["t2-spin30us", "node-t2-spin30us"]
    assert all(len(ms) == 1 and ms[0] > 0 for ms in run["results"]["0"].values())
    assert "| node-t2-spin30us |" in (out / "report.md").read_text() and not (out / "node").exists()
