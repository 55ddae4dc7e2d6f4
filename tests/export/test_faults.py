"""Export faults: every bad input, hostile OUT_DIR, signal and full disk the exporter meets.

Each case asserts the exit code, the one-line message, that no traceback reaches the user, and that
nothing was deleted or left behind (checked by hashing every file of the trees involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import ROOT, copy_writable, save_hf, tiny_model
from processes import one_line

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

FAST = ("--n-prompts", "1", "--parity-tokens", "4")


def run_export(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx.export", *map(str, args), "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def tree(d: Path) -> dict[str, str]:
    """Every file under d (hidden ones too) with its sha256: what must not change."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def no_partials(d: Path) -> None:
    assert not [p for p in d.rglob("*") if ".partial-" in p.name], "temporary dir left behind"


def _assert_clean_failure(proc, out: Path, code: int, phrase: str) -> None:
    one_line(proc, code, phrase)
    assert not out.exists()
    no_partials(out.parent)


def test_missing_dir(tmp_path):
    out = tmp_path / "out"
    _assert_clean_failure(run_export(tmp_path / "nope", out), out, 2, "no such directory")


def test_a_mistyped_local_path_is_never_sent_to_the_hub(tmp_path):
    (tmp_path / "models" / "chat-8x256").mkdir(parents=True)
    # "models/chat-8x25" reads as owner/name, but models/ is a directory here
    proc = run_export("models/chat-8x25", tmp_path / "out", cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", 2, "no such directory: models/chat-8x25: did you mean "
                                                     "models/chat-8x256?")
    assert "fetch" not in proc.stderr


def test_no_weights(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
    for f in src.glob("*.safetensors"):
        f.unlink()
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "has no weights")


def test_bert_config(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"],
                                                 "hidden_size": 768, "num_hidden_layers": 12}))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "not GPT-2")


def test_shapes_disagree_with_config(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_embd"], cfg["n_layer"] = 128, 3
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    proc = run_export(src, out)
    _assert_clean_failure(proc, out, 2, "disagree with its config.json")
    assert "h.2.ln_1.weight missing" in proc.stderr or "wte.weight is (50257, 64)" in proc.stderr


def test_corrupt_weights(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
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
    src = copy_writable(hf_dir, tmp_path / "src")
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
    copy_writable(hf_dir, tmp_path / "src")
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
    "import dialogpt_onnx.export.pipeline as pipeline\n"
    "def paused(*args, **kwargs):\n"
    "    print('verifying', flush=True)\n"
    "    time.sleep(600)\n"
    "pipeline.check_parity = paused\n"
    "from dialogpt_onnx.export.__main__ import main\n"
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
    src = copy_writable(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, phrase)


@pytest.mark.parametrize(("key", "value"), [("n_layer", 10**9), ("n_embd", 2**20), ("vocab_size", 10**12),
                                            ("n_positions", 10**11), ("n_inner", 10**12)])
def test_a_config_beyond_this_machines_memory_is_refused_before_allocating(tmp_path, hf_dir, key, value):
    """n_layer 10**9 allocated until the kernel killed the export (14.6 GB); now one line, at once, under
    an address-space limit well below what it would take."""
    import resource

    src = copy_writable(hf_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    if key == "n_embd":
        cfg["n_head"] = 1
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))

    proc = subprocess.run([sys.executable, "-m", "dialogpt_onnx.export", str(src), str(out), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    _assert_clean_failure(proc, out, 2, "of memory: check n_layer, n_embd")


def test_binary_config_json(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
    (src / "config.json").write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "config.json is not a text file")


# a pickle header naming protocol 200 made torch warn on stderr before failing (seen once with random bytes)
@pytest.mark.parametrize("form,head", [("bin", b""), ("pkl", b""), ("pkl", b"\x80\xc8")])
def test_random_bytes_as_torch_weights(tmp_path, hf_dir, form, head):
    src = copy_writable(hf_dir, tmp_path / "src")
    (src / "model.safetensors").unlink()
    garbage = head + random.Random(f"{form}{head!r}").randbytes(4096)
    (src / ("pytorch_model.bin" if form == "bin" else "small_ft.pkl")).write_bytes(garbage)
    out = tmp_path / "out"
    _assert_clean_failure(run_export(src, out), out, 2, "cannot read weights")


def test_truncated_safetensors(tmp_path, hf_dir):
    src = copy_writable(hf_dir, tmp_path / "src")
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
    (("--variant", "int4", "--precise-activations"), "precise activations are for the int8 variant"),
    (("--graph", "portable", "--precise-activations"), "precise activations are for the int8 variant"),
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

    import dialogpt_onnx.export.pipeline as pipeline
    from dialogpt_onnx.export import ExportError, ExportOptions, export_model

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.GraphEditor, "save", full)
    with pytest.raises(ExportError, match="disk full while writing"):
        export_model(hf_dir, out, ExportOptions(variant="fp32", progress=False, n_prompts=1, parity_tokens=4))
    assert list(mnt.iterdir()) == []


def test_overwrite_onto_a_mount_point(small_disk, hf_dir):
    mnt, mounted = small_disk
    if not mounted:  # a bind of the system's own mount point stands in: /proc is always one
        mnt = Path("/proc")
    proc = run_export(hf_dir, mnt, "--overwrite", *FAST)
    one_line(proc, 2, "is a mount point")



def test_internal_errors_are_not_exit_1(tmp_path, hf_dir, monkeypatch, capsys):
    """Exit 1 means "parity failed" only: a bug exits 3 with its trace, and leaves nothing behind."""
    import dialogpt_onnx.export.__main__ as export_cli
    import dialogpt_onnx.export.pipeline as pipeline

    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(pipeline, "build_graph", broken)
    out = tmp_path / "out"
    assert export_cli.main([str(hf_dir), str(out), "--quiet", *FAST]) == 3  # the runner's code for a bug
    assert "simulated bug" in capsys.readouterr().err
    assert not out.exists()
    no_partials(tmp_path)


def test_a_signal_inside_the_weights_loader_is_an_interruption_not_a_bad_file(hf_dir, monkeypatch):
    """A signal can land inside torch / safetensors C code, which turns the handler's exception into its
    own error ("could not determine the shape of object type ..."); the export must still end as
    interrupted (128 + signal), not blame the user's file."""
    import safetensors.torch

    from dialogpt_onnx.export import signals
    from dialogpt_onnx.export.checkpoint import load_checkpoint
    from dialogpt_onnx.export.errors import ExportError, Interrupted

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
