"""Bad input: one clear line on stderr, exit code 2 (1 for failed --verify), and no output dir left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *map(str, args), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _assert_clean_failure(proc, out: Path, code: int, phrase: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert phrase in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name], "temporary dir left behind"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_missing_dir(tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(run_export(tmp_path / "nope", out), out, 2, "does not exist")


def test_no_weights(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    for f in src.glob("*.safetensors"):
        f.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "has no weights")


def test_bert_config(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                 "hidden_size": 768, "num_hidden_layers": 12}))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "not GPT-2")


def test_shapes_disagree_with_config(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_embd"], cfg["n_layer"] = 128, 3
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    proc = run_export(src, out)
    _assert_clean_failure(proc, out, 2, "disagree with its config.json")
    assert "h.2.ln_1.weight missing" in proc.stderr or "wte.weight is (50257, 64)" in proc.stderr


def test_corrupt_weights(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    (src / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "cannot read")


def test_unknown_variant(tmp_path, hf_dir):
    out = tmp_path / "out"
    _assert_clean_failure(run_export(hf_dir, out, "--variant", "int3"), out, 2, "unknown variant 'int3'")


def test_existing_out_dir_needs_overwrite(tmp_path, hf_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_export(hf_dir, out, "--variant", "int8")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"  # untouched


def test_overwrite_replaces(tmp_path, hf_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    proc = run_export(hf_dir, out, "--variant", "int8", "--overwrite", "--n-prompts", "1", "--parity-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # normal permissions, not mkdtemp's private ones


def test_unwritable_out_dir(tmp_path, hf_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a dir")
    out = blocker / "out"
    proc = run_export(hf_dir, out)
    assert proc.returncode == 2 and "cannot write" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_original_form_without_tokenizer(tmp_path, original_dir):
    out = tmp_path / "out"
    _assert_clean_failure(run_export(original_dir, out), out, 2, "--tokenizer")


def test_verify_below_threshold_fails_without_output(tmp_path, hf_dir):
    out = tmp_path / "out"
    proc = run_export(hf_dir, out, "--variant", "int4", "--verify", "--min-top1", "1.0", "--min-greedy", "1.0",
                      "--n-prompts", "1", "--parity-tokens", "16")
    _assert_clean_failure(proc, out, 1, "parity below thresholds")


def test_verify_passes_and_reports(tmp_path, hf_dir):
    out = tmp_path / "out"
    proc = run_export(hf_dir, out, "--variant", "fp32", "--verify", "--n-prompts", "2", "--parity-tokens", "64")
    assert proc.returncode == 0, proc.stderr
    assert "max |Δlogit|" in proc.stdout and "identical 2/2" in proc.stdout and "[passed]" in proc.stdout
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-3 and parity["greedy_identical"] == 2


@pytest.mark.parametrize("prompts", ["topical", "txt"])
def test_user_prompts(tmp_path, hf_dir, prompts):
    from checkpoints import TOPICAL_CHAT

    if prompts == "topical":
        path = TOPICAL_CHAT / "test_freq.json"
    else:
        path = tmp_path / "p.txt"
        path.write_text("Hi there\tHello! How are you?\nWhat do you like to read?\n")
    out = tmp_path / "out"
    proc = run_export(hf_dir, out, "--variant", "fp32", "--prompts", path, "--n-prompts", "2",
                      "--parity-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["parity"]["prompts"] == 2


def test_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    """Hub ids are for online users; offline they fail with one line, never a traceback."""
    out = tmp_path / "out"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_export("microsoft/DialoGPT-small", out)
    _assert_clean_failure(proc, out, 2, "could not fetch 'microsoft/DialoGPT-small'")
