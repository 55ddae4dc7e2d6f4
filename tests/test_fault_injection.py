"""Fault injection: every bad input, hostile path, signal and full disk the exporter and the runtime meet.

Each case asserts the exit code, the one-line message, that no traceback reaches the user, and that
nothing was deleted or left behind (checked by hashing every file of the trees involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import ROOT, save_hf, tiny_model

import runtime
from runtime.errors import ModelDirError
from runtime.manifest import sha256

FAST = ("--n-prompts", "1", "--parity-tokens", "4")


def run_export(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "export", *map(str, args), "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def tree(d: Path) -> dict[str, str]:
    """Every file under d (hidden ones too) with its sha256: what must not change."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def one_line(proc, code: int, phrase: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert phrase in err, err


def no_partials(d: Path) -> None:
    assert not [p for p in d.rglob("*") if ".partial-" in p.name], "temporary dir left behind"


def _assert_clean_failure(proc, out: Path, code: int, phrase: str) -> None:
    one_line(proc, code, phrase)
    assert not out.exists()
    no_partials(out.parent)


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


def test_overwrite_replaces_a_previous_export(tmp_path, hf_dir):
    out = tmp_path / "out"
    assert run_export(hf_dir, out, "--variant", "int8", *FAST).returncode == 0
    proc = run_export(hf_dir, out, "--variant", "fp32", "--overwrite", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["variant"] == "fp32"
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # normal permissions, not mkdtemp's private ones
    no_partials(tmp_path)


def test_unwritable_out_dir_fails_before_loading(tmp_path, hf_dir):
    """Writability is checked first: with a broken checkpoint too, the error is about OUT_DIR."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a dir")
    src = _copy(hf_dir, tmp_path / "src")
    (src / "model.safetensors").write_bytes(b"garbage")
    proc = run_export(src, blocker / "out")
    one_line(proc, 2, "cannot write")
    assert blocker.read_text() == "not a dir"


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


# -- OUT_DIR safety: --overwrite replaces only a previous export ---------------------------------
@pytest.fixture
def workspace(tmp_path, hf_dir) -> Path:
    """A user's folder: a checkpoint dir and some unrelated files of theirs."""
    _copy(hf_dir, tmp_path / "src")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dialogues.tsv").write_text("hi\thello\n")
    return tmp_path


@pytest.mark.parametrize("target,phrase", [
    ("src", "is the input"), (".", "contains the input"), ("src/sub", "lies inside the input"),
    ("data", "is not a previous export"),
])
def test_overwrite_never_destroys_user_files(workspace, target, phrase):
    before = tree(workspace)
    proc = run_export("src", target, "--overwrite", *FAST, cwd=workspace)
    one_line(proc, 2, phrase)
    assert tree(workspace) == before  # nothing deleted, nothing added
    no_partials(workspace)


def test_overwrite_refuses_export_dir_with_foreign_files(workspace):
    assert run_export("src", "out", *FAST, cwd=workspace).returncode == 0
    (workspace / "out" / "my_results.csv").write_text("1,2,3")
    before = tree(workspace)
    one_line(run_export("src", "out", "--overwrite", *FAST, cwd=workspace), 2, "my_results.csv")
    assert tree(workspace) == before


def test_empty_dir_is_a_valid_out_dir(workspace):
    (workspace / "empty").mkdir()
    assert run_export("src", "empty", *FAST, cwd=workspace).returncode == 0
    assert (workspace / "empty" / "manifest.json").is_file()


def test_symlink_out_dir_refused(workspace):
    (workspace / "link").symlink_to(workspace / "data")
    before = tree(workspace / "data")
    one_line(run_export("src", "link", "--overwrite", *FAST, cwd=workspace), 2, "is a symlink")
    assert tree(workspace / "data") == before


# The child is the real export CLI whose parity step announces itself and then waits: the signal lands
# in the middle of an export (files written to the temporary dir, nothing published) on any machine.
_PAUSED_EXPORT = (
    "import sys, time\n"
    "import export.pipeline as pipeline\n"
    "def paused(*args, **kwargs):\n"
    "    print('verifying', flush=True)\n"
    "    time.sleep(600)\n"
    "pipeline.check_parity = paused\n"
    "from export.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _kill_during_export(cmd: list[str], cwd: Path, sig: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_EXPORT, *cmd, "--quiet"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "verifying\n", proc.stderr.read()
    assert list(cwd.glob(".*.partial-*")), "the export is under way: its temporary dir exists"
    proc.send_signal(sig)
    proc.wait(120)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_leaves_nothing_and_keeps_the_old_export(workspace, sig):
    """A killed --overwrite export leaves the previous export byte for byte, and no temporary dir."""
    assert run_export("src", "out", *FAST, cwd=workspace).returncode == 0
    before = tree(workspace)
    proc = _kill_during_export(["src", "out", "--overwrite", "--variant", "fp32"],
                               workspace, sig)
    err = proc.stderr.read().strip()
    assert proc.returncode == 128 + sig, err
    assert err == f"interrupted by {signal.Signals(sig).name}: nothing written"
    assert tree(workspace) == before
    no_partials(workspace)


def test_stale_partial_of_a_killed_export_is_cleaned(workspace):
    """SIGKILL cannot be caught: the next export to the same OUT_DIR removes what the dead one left."""
    proc = _kill_during_export(["src", "out", "--variant", "fp32"], workspace, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert list(workspace.glob(".out.partial-*"))
    assert run_export("src", "out", *FAST, cwd=workspace).returncode == 0
    no_partials(workspace)


# -- checkpoint validation -----------------------------------------------------------------------
def test_config_with_fewer_layers_than_the_weights(tmp_path):
    src = save_hf(tiny_model(n_layer=4), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_layer"] = 2
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    proc = run_export(src, out)
    _assert_clean_failure(proc, out, 2, "weights the config does not use: h.2.* (12 tensors), h.3.* (12 tensors)")


def test_stray_tensor_is_named(tmp_path, tiny):
    from safetensors.torch import save_file

    src = save_hf(tiny, tmp_path / "src")
    sd = {k: v.contiguous() for k, v in tiny.state_dict().items() if k != "lm_head.weight"}
    sd["transformer.h.0.attn.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(sd, str(src / "model.safetensors"))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "h.0.attn.extra_proj.weight")


@pytest.mark.parametrize("key,value,phrase", [
    ("n_head", 0, "n_head must be an integer >= 1, got 0"),
    ("n_embd", "abc", "n_embd must be an integer >= 1, got 'abc'"),
    ("n_head", 5, "not divisible by n_head 5"),
    ("n_layer", 2.5, "n_layer must be an integer >= 1, got 2.5"),
    ("layer_norm_epsilon", "tiny", "layer_norm_epsilon must be a number"),
    ("scale_attn_weights", "yes", "scale_attn_weights must be true or false"),
    ("eos_token_id", 99999, "outside the vocabulary"),
])
def test_bad_config_values_name_the_key(tmp_path, hf_dir, key, value, phrase):
    src = _copy(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, phrase)


def test_binary_config_json(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    (src / "config.json").write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "config.json is not a text file")


@pytest.mark.parametrize("form", ["bin", "pkl"])
def test_random_bytes_as_torch_weights(tmp_path, hf_dir, form):
    src = _copy(hf_dir, tmp_path / "src")
    (src / "model.safetensors").unlink()
    (src / ("pytorch_model.bin" if form == "bin" else "small_ft.pkl")).write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "cannot read weights")


def test_truncated_safetensors(tmp_path, hf_dir):
    src = _copy(hf_dir, tmp_path / "src")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "cannot read")


# -- exporter arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("args,phrase", [
    (("--n-prompts", "0"), "--n-prompts: must be >= 1"),
    (("--parity-tokens", "0"), "--parity-tokens: must be >= 1"),
    (("--threads", "-1"), "--threads: must be >= 1"),
    (("--threads", "two"), "--threads: 'two' is not an integer"),
    (("--min-top1", "1.5"), "min_top1 must be a number in [0, 1]"),
    (("--max-logit-diff", "nan"), "--max-logit-diff: must be a finite number"),
    (("--bogus",), "unrecognized arguments: --bogus"),
])
def test_bad_arguments_one_line(tmp_path, hf_dir, args, phrase):
    out = tmp_path / "out"
    _assert_clean_failure(run_export(hf_dir, out, *args), out, 2, phrase)


def test_binary_prompts_file(tmp_path, hf_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xff\xfe\x00\x81" * 100)
    out = tmp_path / "out"
    _assert_clean_failure(run_export(hf_dir, out, "--prompts", prompts), out, 2, "is not UTF-8 text")


# -- the filesystem fails --------------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem (tmpfs; CI runs as root). Without mount rights the same code path is driven by
    injecting ENOSPC into the writer, so the case is always exercised."""
    mnt = tmp_path / "small_disk"
    mounted = _mount_tmpfs(mnt, "3m")
    yield mnt, mounted
    if mounted:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full(small_disk, hf_dir, monkeypatch):
    mnt, mounted = small_disk
    out = mnt / "out"
    if mounted:
        proc = run_export(hf_dir, out, "--variant", "fp32", *FAST)
        _assert_clean_failure(proc, out, 2, f"disk full while writing {out}: free at least")
        assert list(mnt.iterdir()) == []
        return
    import errno

    import export.pipeline as pipeline
    from export import ExportError, ExportOptions, export_model

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "save_model", full)
    with pytest.raises(ExportError, match="disk full while writing"):
        export_model(hf_dir, out, ExportOptions(variant="fp32", progress=False, n_prompts=1, parity_tokens=4))
    assert list(mnt.iterdir()) == []


def test_overwrite_onto_a_mount_point(small_disk, hf_dir):
    mnt, mounted = small_disk
    if not mounted:  # a bind of the system's own mount point stands in: /proc is always one
        mnt = Path("/proc")
    proc = run_export(hf_dir, mnt, "--overwrite", *FAST)
    one_line(proc, 2, "is a mount point")


# -- runtime: model dirs -------------------------------------------------------------------------
def run_runtime(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=300)


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _break_onnx_consistently(d: Path, data: bytes) -> None:
    """Replace model.onnx and record its digest and size: the file itself is what is broken."""
    (d / "model.onnx").write_bytes(data)

    def fix(m):
        m["files"]["model.onnx"] = sha256(d / "model.onnx")
        m["file_sizes"]["model.onnx"] = len(data)

    _edit_manifest(d, fix)


def _flip_bytes(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")


BAD_DIRS = {
    "missing": (lambda d: shutil.rmtree(d), "does not exist"),
    "wrong sha256": (lambda d: _flip_bytes(d / "model.onnx"), "does not match the sha256"),
    "truncated onnx": (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:5000]),
                       "is 5000 bytes, the manifest says"),
    "truncated onnx, digest fixed": (lambda d: _break_onnx_consistently(d, (d / "model.onnx").read_bytes()[:9999]),
                                     "not a loadable ONNX model"),
    "random bytes as onnx": (lambda d: _break_onnx_consistently(d, os.urandom(20000)), "not a loadable ONNX model"),
    "newer format": (lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)),
                     "written by a newer dialogpt-onnx; this one reads version 1: upgrade dialogpt-onnx"),
    "older format": (lambda d: _edit_manifest(d, lambda m: m.update(format_version=0)), "re-export the model"),
    "manifest without io": (lambda d: _edit_manifest(d, lambda m: m.pop("io")), "lacks 'io'"),
    "manifest without n_layer": (lambda d: _edit_manifest(d, lambda m: m["model"].pop("n_layer")),
                                 "lacks a valid model.n_layer"),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), "is not a JSON object"),
    "manifest binary": (lambda d: (d / "manifest.json").write_bytes(os.urandom(300)), "is not valid JSON"),
    "tokenizer missing": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "corrupt tokenizer.json": (lambda d: _corrupt_tokenizer(d), "not a readable tokenizer.json"),
}


def _corrupt_tokenizer(d: Path) -> None:
    data = b"{not json" + b" " * ((d / "tokenizer.json").stat().st_size - 9)
    (d / "tokenizer.json").write_bytes(data)

    def fix(m):
        m["files"]["tokenizer.json"] = sha256(d / "tokenizer.json")

    _edit_manifest(d, fix)


@pytest.mark.parametrize("case", list(BAD_DIRS))
def test_bad_model_dir(tmp_path, exported, case):
    d = _copy(exported("int8"), tmp_path / "m")
    breaker, phrase = BAD_DIRS[case]
    breaker(d)
    with pytest.raises(ModelDirError, match=None) as e:
        runtime.load(d)
    assert phrase in str(e.value)
    proc = run_runtime("generate", d, "Hello")
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2, phrase)


def test_no_verify_skips_hashing_but_not_sizes(tmp_path, exported):
    d = _copy(exported("int8"), tmp_path / "m")
    tok = (d / "tokenizer.json").read_bytes()
    i = tok.index(b",")  # same size, still valid JSON: only a hash can tell
    (d / "tokenizer.json").write_bytes(tok[:i + 1] + b" " + tok[i + 1:].replace(b" ", b"", 1)
                                       if b" " in tok[i + 1:] else tok[:i] + b"\n" + tok[i:-1])
    assert (d / "tokenizer.json").stat().st_size == len(tok)
    with pytest.raises(ModelDirError, match="sha256"):
        runtime.load(d)
    assert runtime.load(d, verify=False).generate("Hi", max_new_tokens=2).ids
    assert run_runtime("generate", d, "Hi", "--max-new-tokens", "2").returncode == 2
    assert run_runtime("generate", d, "Hi", "--no-verify", "--max-new-tokens", "2").returncode == 0
    (d / "model.onnx").write_bytes(b"short")
    with pytest.raises(ModelDirError, match="bytes, the manifest says"):
        runtime.load(d, verify=False)


# -- runtime: API arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("inputs,error,phrase", [
    (b"hello", TypeError, "inputs is bytes: decode it to str first"),
    (None, TypeError, "inputs must be a str, a list of token ids"),
    (42, TypeError, "inputs must be a str, a list of token ids"),
    ([1.5, 2.5], TypeError, "each input must be a str or a list of token ids"),
    ([[1, 2], None], TypeError, "each input must be a str or a list of token ids"),
    ([], ValueError, "inputs must not be empty"),
    ("   ", ValueError, "non-empty"),
    ("bad \udcff utf-8", ValueError, "text is not valid UTF-8"),
    ([1, 99999999], ValueError, "input ids must lie in"),
])
def test_generate_refuses_bad_inputs(exported, inputs, error, phrase):
    model = runtime.load(exported("int8"))
    with pytest.raises(error, match=None) as e:
        model.generate(inputs, max_new_tokens=2)
    assert phrase in str(e.value)


@pytest.mark.parametrize("kw,phrase", [
    ({"do_sample": "no"}, "do_sample must be True or False, got 'no'"),
    ({"seed": "abc"}, "seed must be None or an integer"),
    ({"seed": -1}, "seed must be None or an integer"),
    ({"seed": 1.5}, "seed must be None or an integer"),
    ({"do_sample": True, "temperature": 1e-45}, "temperature must be a number >= 0.0001"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_p": "0.9"}, "top_p must be a number in (0, 1]"),
    ({"top_k": 2.0}, "top_k must be an integer >= 0"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer >= 0"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty must be a number > 0"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"do_sample": True, "temperature": 0.0}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"), ({"min_new_tokens": -2}, "min_new_tokens"),
    ({"beams": 4}, "unknown generation option"),
])
def test_bad_options_name_the_argument(exported, kw, phrase):
    model = runtime.load(exported("int8"))
    for call in (lambda: model.generate("hi", **kw), lambda: model.stream("hi", **kw),
                 lambda: model.chat(**kw), lambda: model.chat().send("hi", **kw)):
        with pytest.raises(ValueError) as e:
            call()
        assert phrase in str(e.value)


@pytest.mark.parametrize("kw,phrase", [
    ({"max_length": 0}, "max_length must be None"), ({"threads": -1}, "threads must be None"),
    ({"threads": 0}, "threads must be None"), ({"threads": "2"}, "threads must be None"),
])
def test_load_arguments(exported, kw, phrase):
    with pytest.raises(ValueError, match=None) as e:
        runtime.load(exported("int8"), **kw)
    assert phrase in str(e.value)


@pytest.mark.parametrize("budget", [0, -5, 2.5, "100"])
def test_history_budget_checked(exported, budget):
    with pytest.raises(ValueError, match="max_history_tokens must be"):
        runtime.load(exported("int8")).chat(max_history_tokens=budget)


def test_special_token_text_is_plain_text(exported):
    model = runtime.load(exported("int8"))
    chat = model.chat(max_new_tokens=4)
    chat.send("Hello <|endoftext|> there")
    user = chat.turns[0]
    assert user.count(model.eos) == 1 and user[-1] == model.eos  # one turn, ended by the runtime only
    assert chat.history[0] == "Hello <|endoftext|> there"


# -- runtime: chat state -------------------------------------------------------------------------
def test_abandoned_stream_keeps_partial_reply_and_stays_consistent(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=16, min_new_tokens=16)
    chat.send("Hi there")
    gen = chat.stream("Tell me a story")
    first = next(gen)
    nxt = next(gen)
    said = first + nxt
    del gen  # abandoned: dropped by the caller
    assert chat.history[-2:] == ["Tell me a story", said]
    assert all(t[-1] == model.eos for t in chat.turns)
    # the next turn answers exactly as a fresh model reading the same history
    reply = chat.send("And then?")
    fresh = runtime.load(exported("fp32"))
    history = [t for turn in chat.turns[:-1] for t in turn]
    assert reply == fresh.generate(history, max_new_tokens=16, min_new_tokens=16).text


def test_resuming_a_stream_after_another_turn_appends_nothing(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=12, min_new_tokens=12)
    gen = chat.stream("First question")
    next(gen)
    chat.send("Second question")  # starts a turn: the first stream is closed, keeping what it said
    assert list(gen) == []
    assert [t for i, t in enumerate(chat.history) if i % 2 == 0] == ["First question", "Second question"]
    assert len(chat.turns) == 4


def test_stream_never_started_adds_nothing(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=4)
    chat.stream("Never read")
    chat.send("Read me")
    assert chat.history[0] == "Read me" and len(chat.turns) == 2


def test_failed_turn_is_rolled_back(exported, monkeypatch):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=8)
    chat.send("Hello")
    before = chat.turns
    calls = [0]
    real = model.graph.ort_session.run_with_iobinding

    def failing(binding):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("onnxruntime failed")
        return real(binding)

    model.graph.ort_session.run_with_iobinding = failing
    with pytest.raises(RuntimeError):
        chat.send("Will fail")
    assert chat.turns == before
    model.graph.ort_session.run_with_iobinding = real
    chat.send("Works again")
    assert chat.history[-2] == "Works again" and chat.stats["recomputes"] == 1


def test_idle_chat_memory_is_bounded_and_releasable(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=16, max_history_tokens=64)
    for i in range(20):
        chat.send(f"Message {i} about the weather and my garden.")
    per_token = model.kv_bytes_per_token
    assert per_token == 2 * 2 * 64 * 4  # K and V, 2 layers, width 64, float32
    assert chat.kv_bytes == per_token * (64 + 16)  # history budget + reply, reserved once, never grown
    chat.release()
    assert chat.kv_bytes == 0
    chat.send("Still here?")
    assert chat.kv_bytes > 0


# -- runtime: CLI --------------------------------------------------------------------------------
def test_cli_generate_invalid_utf8_argument(exported):
    proc = subprocess.run([sys.executable.encode(), b"-m", b"runtime", b"generate",
                           str(exported("int8")).encode(), b"caf\xe9 \xff"],
                          cwd=ROOT, capture_output=True, timeout=120)
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2,
             "text is not valid UTF-8")


@pytest.mark.parametrize("args,phrase", [
    (("--threads", "-1"), "--threads: must be >= 1"), (("--max-length", "0"), "--max-length: must be >= 1"),
    (("--top-p", "2"), "top_p must be a number in (0, 1]"), (("--seed", "-3"), "--seed: must be >= 0"),
    (("--max-history-tokens", "0"), "--max-history-tokens: must be >= 1"),
    (("--temperature", "inf"), "--temperature: must be a finite number"),
])
def test_cli_bad_arguments_one_line(exported, args, phrase):
    proc = run_runtime("chat", exported("int8"), *args, stdin=b"Hello\n")
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2, phrase)


def test_piped_chat_one_line_per_input_line(exported):
    lines = [b"Hello there", b"", b"caf\xe9 \xff broken", b"word " * 1100, b"Are you still there?", b"   ",
             b"Bye <|endoftext|> now"]
    proc = run_runtime("chat", exported("int8"), "--max-new-tokens", "8", stdin=b"\n".join(lines) + b"\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode().split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)  # exactly one line per input line
    assert out[1] == "" and out[2] == "" and out[3] == "" and out[5] == ""
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 2 and "not valid UTF-8" in err[0] and "exceeds the context" in err[1]
    assert "Traceback" not in proc.stderr.decode()
    # the chat went on after the bad lines: the reply to line 5 is the one a model gives to that history
    model = runtime.load(exported("int8"))
    chat = model.chat(max_new_tokens=8)
    assert chat.send("Hello there") == out[0]
    assert chat.send("Are you still there?") == out[4]


class _Out:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def flush(self) -> None:
        pass


def test_piped_reply_line_breaks_become_spaces():
    from runtime.__main__ import _reply

    def pieces():
        yield from ["one\ntwo", "\r\nthree\u2028four", "\x0bfive"]

    out = _Out()
    wrote, stopped = _reply(pieces(), out, piped=True)
    text = "".join(out.parts)
    assert wrote and not stopped and text == "one two  three four five" and len(text.splitlines()) == 1


def test_ctrl_c_stops_the_reply_and_keeps_the_turn(exported):
    """The first Ctrl-C during a reply ends that reply (what was written becomes the bot's turn); the
    chat goes on."""
    from runtime.__main__ import _reply

    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=40, min_new_tokens=40)

    def interrupted(it):
        for i, piece in enumerate(it):
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: delivered to this main thread
            yield piece

    stream = chat.stream("Tell me everything")
    out = _Out()
    wrapper = interrupted(stream)
    wrote, stopped = _reply(wrapper, out, piped=True)
    stream.close()  # the REPL closes the chat's stream through the wrapper; here the wrapper is ours
    assert wrote and stopped
    assert chat.history[-1] == "".join(out.parts).strip() or chat.history[-1].startswith("".join(out.parts)[:5])
    assert len(chat.turns) == 2 and len(chat.turns[1]) < 40
    assert chat.send("Go on")  # the chat continues
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


PTY_DRIVER = r"""
import os, pty, select, signal, sys, time
# The child is the real chat CLI with every token paced at 20 ms, so its 1000-token reply lasts 20 s: only
# the Ctrl-C ends it, however fast the machine (unpaced, the tiny model's reply ended before a fixed sleep).
CHILD = (
    "import sys, time\n"
    "import runtime.text as text\n"
    "push = text.StreamDecoder.push\n"
    "text.StreamDecoder.push = lambda self, token: (time.sleep(0.02), push(self, token))[1]\n"
    "from runtime.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
pid, fd = pty.fork()
if pid == 0:
    # a terminal's foreground job gets SIGINT's default action whatever this driver inherited (a background
    # job's SIGINT is ignored, and exec keeps that): Python then turns Ctrl-C into KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, "-c", CHILD, "chat", sys.argv[1],
                              "--max-new-tokens", "1000", "--min-new-tokens", "1000"])
screen = b""
def read_until(done, timeout=30):
    global screen
    end = time.time() + timeout
    while not done() and time.time() < end:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            screen += os.read(fd, 4096)
        except OSError:
            break
    return done()
sys.path.insert(0, sys.argv[2])
from processes import wait_until_reading  # a prompt on screen is not yet a read that Ctrl-C interrupts
steps = [read_until(lambda: b">>> You: " in screen)]
os.write(fd, b"Tell me a very long story\n")
bot = lambda: screen.find(b"Bot: ")
# the event: reply text is streaming (some characters after "Bot: ")
steps.append(read_until(lambda: bot() >= 0 and len(screen) > bot() + len(b"Bot: ") + 8))
os.write(fd, b"\x03")                                   # Ctrl-C during the reply
steps.append(read_until(lambda: b"(stopped)" in screen))
steps.append(read_until(lambda: b">>> You: " in screen[screen.find(b"(stopped)"):]) and wait_until_reading(pid))
os.write(fd, b"\x03")                                   # Ctrl-C at the prompt
read_until(lambda: False, timeout=15)                   # drain until the child closes the terminal
end = time.time() + 15                                  # closing the terminal comes a moment before the exit
done, status = os.waitpid(pid, os.WNOHANG)
while not done and time.time() < end:
    time.sleep(0.05)
    done, status = os.waitpid(pid, os.WNOHANG)
if not done:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(steps, os.waitstatus_to_exitcode(status) if done else "still running")
print(screen.decode(errors="replace"), file=sys.stderr)
"""


def test_ctrl_c_interactive_session(exported, tmp_path):
    """Interactive chat on a terminal: Ctrl-C during a reply prints (stopped) and the prompt returns;
    Ctrl-C at the prompt exits 130. Driven through a pseudo-terminal by a separate process."""
    driver = tmp_path / "driver.py"
    driver.write_text(PTY_DRIVER)
    proc = subprocess.run([sys.executable, str(driver), str(exported("fp32")), str(ROOT / "tests")], cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=180)
    assert proc.stdout.strip() == "[True, True, True, True] 130", (proc.stdout, proc.stderr[-3000:])


def test_internal_errors_are_not_exit_1(tmp_path, hf_dir, monkeypatch, capsys):
    """Exit 1 means "parity failed" only: a bug exits 3 with its trace, and leaves nothing behind."""
    import export.__main__ as export_cli
    import export.pipeline as pipeline

    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(pipeline, "build_graph", broken)
    out = tmp_path / "out"
    assert export_cli.main([str(hf_dir), str(out), "--quiet", *FAST]) == export_cli.INTERNAL_ERROR
    assert "simulated bug" in capsys.readouterr().err
    assert not out.exists()
    no_partials(tmp_path)


def test_a_signal_inside_the_weights_loader_is_an_interruption_not_a_bad_file(hf_dir, monkeypatch):
    """A signal can land inside torch / safetensors C code, which turns the handler's exception into its
    own error ("could not determine the shape of object type ..."); the export must still end as
    interrupted (128 + signal), not blame the user's file."""
    import safetensors.torch

    from export import signals
    from export.checkpoint import load_checkpoint
    from export.errors import ExportError, Interrupted

    def swallowing_load_file(path):
        try:
            signals._handler(signal.SIGTERM, None)  # the signal arrives mid-call...
        except Interrupted:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") \
                from None  # ...and the C code reports its own error instead
        raise AssertionError("unreachable")

    monkeypatch.setattr(safetensors.torch, "load_file", swallowing_load_file)
    with signals.interruptible(), pytest.raises(Interrupted) as e:
        load_checkpoint(hf_dir)
    assert e.value.args[0] == signal.SIGTERM and not isinstance(e.value, ExportError)
