"""The benchmark suite's --quick run goes through the whole pipeline (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from checkpoints import ROOT

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

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
    for name in {"llama.cpp-Q8_0", "optimum-fp32", "ctranslate2-int8", "openvino-int4"} - set(engines):
        assert f"skipping {name}" in proc.stdout or name in proc.stderr
    # the targets name small models: the report says what this run measured instead, not that a peer is absent
    assert "not measured (this run's models: tiny)" in report and "not in this run" not in report


def test_targets_say_which_engine_is_missing():
    from benchmarks.report import targets

    measured = {"decode_ms_per_token": {"median": 4.0}}
    run = {"models": {"small": {"engines": {"ours-int8": measured, "llama.cpp-Q8_0": {"decode_ms_per_token":
                                                                                      {"median": 6.0}}}}}}
    lines = "\n".join(targets(run))
    assert "| small: ours-int8 ≥ 1.4× faster than llama.cpp-Q8_0 | 1.50× (4.00 vs 6.00 ms/token) | met |" in lines
    assert "not measured (optimum-int8 not in this run)" in lines and "this run's models: small" in lines


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
    big = run["models"][hf_dir.name]["big_requests"]  # both big bodies refused while 8 streams went on
    assert big["statuses"][0] in (413, "WriteError", "RemoteProtocolError") and big["statuses"][1] == 400
    assert big["tokens_during"] > 0 and big["max_gap_ms"] > 0
    stored = run["models"][hf_dir.name]["stored_chats"]
    assert stored["stored"] >= run["params"]["stored_chats"] and stored["empty_ms"] > 0 < stored["full_ms"]
    report = (out / "report.md").read_text()
    assert "beside 8 streaming chats" in report and "stored chats (one tenant)" in report
    steps = run["models"][hf_dir.name]["step_ms"]
    assert sorted(steps, key=int) == ["1", "3"] and all(s["median"] > 0 for s in steps.values())
    assert (out / "serve.png").is_file() and "decode step over k rows" in (out / "report.md").read_text()


def test_quant_ablation_builds_each_spec_and_reports(tmp_path, hf_dir):
    out = tmp_path / "ablation"
    # each from the fp32 graph, not from the one before; the last one mixes precisions by layer
    specs = "nbits:4:32:4:gptq,head:8:32:4+rowwise7,nbits:8:32:4@mlp/proj+nbits:4:32:4"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.quant_ablation", str(hf_dir), "--specs", specs,
                           "--contexts", "4", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())["results"]
    assert list(res) == [*specs.split(","), "fp32"]
    assert all(0 <= r["token_agreement"] <= 1 and r["decode_ms_per_token"]["median"] > 0 for r in res.values())
    assert res["fp32"]["mean_kld"] == 0 and all(r["mean_kld"] > 0 for k, r in res.items() if k != "fp32")
    mixed = onnx.load(out / "models" / "nbits_8_32_4@mlp" / "proj+nbits_4_32_4" / "model.onnx").graph.node
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in mixed if n.op_type == "MatMulNBits"}
    assert {b for name, b in bits.items() if "mlp/proj" in name} == {8}
    assert {b for name, b in bits.items() if "attn/qkv" in name} == {4}
    ops = {n.op_type for n in onnx.load(out / "models" / "head_8_32_4+rowwise7" / "model.onnx").graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized", "MatMulIntegerToFloat"} <= ops and "MatMul" not in ops
    gptq = [n for n in onnx.load(out / "models" / "nbits_4_32_4_gptq" / "model.onnx").graph.node
            if n.op_type == "MatMulNBits"]
    assert gptq and all(a.i == 4 for n in gptq for a in n.attribute if a.name == "bits")


def test_benchmark_cli_never_writes_over_a_users_files_and_fails_loudly(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    for args in (["--out", str(mine), "--quick"], ["--out", str(mine / "report.md"), "--quick"]):
        proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stderr.startswith("error: --out ") and "Traceback" not in proc.stderr
    assert (mine / "report.md").read_text() == "my own notes"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--out", str(tmp_path / "bad"), "--model",
                           str(tmp_path / "nonexistent"), "--engines", "ours-int8"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1 and "error: the run is incomplete" in proc.stderr, proc.stderr[-2000:]


def test_ours_bans_eos_like_every_engine(tmp_path):
    """The suite's own engine generates exactly n tokens with EOS banned, as the others: its replies are
    generate()'s with min_new_tokens = n (without the ban its agreement with the reference was wrong).
    The bundled model: trained replies end their turn, random weights' hardly ever do."""
    from benchmarks.engines import EOS, Ours
    from benchmarks.quality import BUNDLED
    from dialogpt_onnx import runtime

    ours = Ours("int8")
    d = ours.prepare(BUNDLED, tmp_path, threads=2)
    ours.load(d, threads=2)
    model = runtime.load(d)
    prompts = [model.encode_turn(t) for t in ("Hi!", "Do you like music?", "Who is your favorite band?")]
    assert any(EOS in model.generate(p, max_new_tokens=16).ids for p in prompts)  # where the ban matters
    for prompt in prompts:
        ids, _ = ours.generate(prompt, 16)
        assert EOS not in ids and len(ids) == 16
        assert ids == model.generate(prompt, max_new_tokens=16, min_new_tokens=16).ids


def test_runtime_profile_times_onnxruntime_apart_from_python(tmp_path, exported):
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.runtime_profile", str(exported("int8")),
                           "--repeats", "1", "--history", "8", "--new-tokens", "4", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    decode, overhead = res["decode_ms_per_token"]["median"], res["python_overhead_ms_per_token"]["median"]
    assert 0 < overhead < decode  # the session's own time was counted and taken out
    assert res["chat_10_turns"]["cached"]["prefilled_tokens"] < res["chat_10_turns"]["recompute"]["prefilled_tokens"]


def test_contention_study_decodes_beside_busy_processes(tmp_path, exported):
    out = tmp_path / "contention"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.contention", str(exported("int8")), "--busy",
                           "0,1", "--settings", "t2-spin30us,t1", "--repeats", "2", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "contention.json").read_text())
    assert list(run["results"]) == ["0", "1"] and run["settings"] == ["t2-spin30us", "t1"]
    assert all(len(ms) == 2 and min(ms) > 0 for r in run["results"].values() for ms in r.values())
    assert "| t1 |" in (out / "report.md").read_text()
    assert (out / "contention.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "benchmarks.studies.contention", str(exported("int8")), "--settings",
                          "fast", "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown setting 'fast'" in bad.stderr and "Traceback" not in bad.stderr


def test_int4_prefill_study_times_each_kernel_by_prompt_rows(tmp_path):
    out = tmp_path / "prefill"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.int4_prefill", "--rows", "1,4",
                           "--shapes", "256x128", "--rounds", "1", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "int4_prefill.json").read_text())["results"]
    assert {(r["kernel"], r["rows"]) for r in results} == {(k, m) for k in ("int8 row-wise", "int4 b32", "int4 b128")
                                                           for m in (1, 4)}
    assert all(r["us"] > 0 for r in results)
    assert "| 256×128 | int4 b32 |" in (out / "report.md").read_text()
    assert (out / "int4_prefill.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "benchmarks.studies.int4_prefill", "--shapes", "100x7",
                          "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "multiple of 128" in bad.stderr and "Traceback" not in bad.stderr
