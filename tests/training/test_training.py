"""dialogpt-onnx train: data formats, DialoGPT windows and masking, resume == uninterrupted, fine-tuning,
export of the result, and every bad input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import ROOT

from dialogpt_onnx import runtime
from dialogpt_onnx.corpora import DataError, data_licenses, read_dialogues, tokenizer_files
from dialogpt_onnx.export import ExportOptions, export_model
from dialogpt_onnx.export.tokenizer import build_tokenizer
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID, encode_turn
from dialogpt_onnx.training.trainer import Settings, Trainer
from dialogpt_onnx.training.windows import IGNORE, Batches, dialogue_windows, labels_for

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop

DIALOGUES = [
    ["Hi! Do you like music?", "I love jazz, especially Miles Davis.", "Which album should I start with?",
     "Kind of Blue, without a doubt."],
    ["What did you do this weekend?", "I went hiking in the mountains.", "That sounds great, was it cold?"],
    ["Have you read any good books lately?", "Yes, a novel about a lighthouse keeper.", "Who wrote it?",
     "I forget the author, sorry.", "No worries!"],
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(tokenizer_files())


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"turns": d}) + "\n" for d in DIALOGUES))
    tsv = tmp_path / "d.tsv"
    tsv.write_text("".join("0.0 " + " EOS 1.0 ".join(d) + "\n" for d in DIALOGUES))
    topical = tmp_path / "d.json"
    topical.write_text(json.dumps({f"c{i}": {"content": [{"message": t, "agent": f"agent_{1 + j % 2}"}
                                                          for j, t in enumerate(d)]} for i, d in enumerate(DIALOGUES)}))
    return {"jsonl": jsonl, "tsv": tsv, "topical": topical}


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "topical"])
def test_every_format_reads_the_same_dialogues(files, fmt):
    assert read_dialogues(files[fmt]) == DIALOGUES


def test_chitchat_dataset():
    convs = read_dialogues("chitchat")
    assert len(convs) > 3500 and all(len(c) >= 2 for c in convs)  # 7,168 conversations, 4,017 answered
    assert sum(map(len, convs)) > 130_000  # ~139k turns: consecutive messages of one sender are one turn
    lic = data_licenses(["chitchat"])["LICENSE-chitchat-dataset"]
    assert "MIT" in lic.read_text() or "Permission is hereby granted" in lic.read_text()


def test_windows_start_at_turn_boundaries_and_mask_the_first_turn(tok):
    turns = [encode_turn(tok, t, EOS_TOKEN_ID) for t in DIALOGUES[2]]
    flat = [t for turn in turns for t in turn]
    wins = dialogue_windows(turns, length=24)
    assert len(wins) >= 2
    starts = {0} | {i + 1 for i, t in enumerate(flat) if t == EOS_TOKEN_ID}
    for w in wins:
        pos = next(p for p in starts if flat[p:p + len(w.ids)] == w.ids)  # a turn boundary starts it
        assert w.ids[-1] == EOS_TOKEN_ID and len(w.ids) <= 24 and pos in starts
        masked = labels_for(w, mask_first_turn=True)
        assert masked[: w.first_turn] == [IGNORE] * w.first_turn and masked[w.first_turn:] == w.ids[w.first_turn:]
        assert labels_for(w, mask_first_turn=False) == w.ids
    # every turn after the first is predicted with context in some window
    predicted = {tuple(turn) for w in wins for turn in _turns_of(w.ids)[1:]}
    assert {tuple(t) for t in turns[1:]} <= predicted


def _turns_of(ids: list[int]) -> list[list[int]]:
    out, cur = [], []
    for t in ids:
        cur.append(t)
        if t == EOS_TOKEN_ID:
            out.append(cur)
            cur = []
    return out


def test_batches_pad_with_no_loss_and_fixed_order(tok):
    wins = [w for d in DIALOGUES * 10 for w in dialogue_windows([encode_turn(tok, t, EOS_TOKEN_ID) for t in d], 24)]
    b = Batches(wins, batch_size=2, mask_first_turn=True, pad_id=EOS_TOKEN_ID, seed=3)
    assert len(b) > 10
    assert [x.tolist() for x in b.order(0)] == [x.tolist() for x in b.order(0)]  # fixed by seed and epoch
    assert [x.tolist() for x in b.order(0)] != [x.tolist() for x in b.order(1)]  # reshuffled every epoch
    assert sorted(i for x in b.order(1) for i in x.tolist()) == list(range(len(wins)))  # each window once
    ids, labels = b.tensors(b.order(0)[0])
    for r, i in enumerate(b.order(0)[0]):
        n = len(wins[i].ids)
        assert (labels[r, n:] == IGNORE).all() and (ids[r, :n] == wins[i].ids).all()


def _settings(data: Path, **kw) -> Settings:
    base = dict(data=(str(data),), eval=str(data), layers=2, width=32, heads=2, length=64, batch=2, lr=3e-3,
                warmup=2, max_steps=6, eval_every=0, eval_conversations=3, seed=1)
    return Settings(**{**base, **kw})


def _weights(out: Path) -> dict[str, np.ndarray]:
    state = torch.load(out / "train_state" / "state.pt", weights_only=False)
    return {k: v.numpy() for k, v in state["model"].items()}


def test_resume_equals_an_uninterrupted_run(tmp_path, files):
    s = _settings(files["jsonl"])
    full = Trainer(s, tmp_path / "full", threads=1, progress=False).run()
    assert full.finished and full.step == 6
    part = Trainer(s, tmp_path / "split", threads=1, progress=False).run(minutes=1e-9)  # stops after a step
    assert not part.finished and part.step == 1
    resumed = Trainer(s, tmp_path / "split", threads=1, progress=False).run()
    assert resumed.finished and resumed.step == 6
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6] and resumed.losses == full.losses  # the curve's
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_loss_falls_and_result_exports_and_chats(tmp_path, files):
    out = tmp_path / "run"
    (files["jsonl"].parent / "LICENSE").write_text("the data's license\n")
    p = Trainer(_settings(files["jsonl"], max_steps=30, eval_every=15), out, threads=1, progress=False).run()
    assert (out / f"LICENSE-{tmp_path.name}").read_text() == "the data's license\n"  # travels with the weights
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [15, 30] and log[-1]["eval_reply_ppl"] < log[0]["eval_reply_ppl"]
    assert p.eval_ppl == log[-1]["eval_reply_ppl"] or abs(p.eval_ppl - log[-1]["eval_reply_ppl"]) < 0.01
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_layer"] == 2 and cfg["_training"]["step"] == 30
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = export_model(out, tmp_path / "onnx", ExportOptions(variant="fp32", progress=False, n_prompts=1,
                                                             parity_tokens=8))
    assert not res.failures
    assert isinstance(runtime.load(tmp_path / "onnx").chat(max_new_tokens=4).send("Hi!"), str)


def test_fine_tune_from_an_original_form_checkpoint(tmp_path, files, original_dir, tiny_fp16):
    out = tmp_path / "ft"
    Trainer(_settings(files["tsv"], init=str(original_dir), max_steps=3, lr=1e-4), out, threads=1,
            progress=False).run()
    tuned = _weights(out)
    before = tiny_fp16.state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert tuned[key].shape == tuple(before[key].shape)
    assert not np.array_equal(tuned["transformer.h.0.attn.c_attn.weight"],
                              before["transformer.h.0.attn.c_attn.weight"].numpy())  # it trained
    delta = np.abs(tuned["transformer.wte.weight"] - before["transformer.wte.weight"].numpy()).max()
    assert 0 < delta < 0.01  # from the checkpoint, not from scratch


def run_training(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx.training", *map(str, args), "--quiet"], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)


def _bad(tmp_path: Path, name: str, content: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


@pytest.mark.parametrize("make,phrase", [
    (lambda d: d / "missing.jsonl", "missing.jsonl does not exist"),
    (lambda d: _bad(d, "bad.jsonl", '{"turns": ["a", "b"]}\n{"turns": [oops\n'), "bad.jsonl:2: malformed JSON"),
    (lambda d: _bad(d, "shape.jsonl", '{"text": "a"}\n'), "shape.jsonl:1: expected {\"turns\""),
    (lambda d: _bad(d, "empty.jsonl", "\n\n"), "holds no dialogue of two or more turns"),
    (lambda d: _bad(d, "one.tsv", "just one turn\n"), "holds no dialogue of two or more turns"),
    (lambda d: _bad(d, "bin.tsv", b"\xff\xfe\x00\x01" * 50), "is not UTF-8 text"),
    (lambda d: _bad(d, "x.csv", "a,b\n"), "unknown format '.csv'"),
])
def test_bad_data_one_line(tmp_path, make, phrase):
    out = tmp_path / "out"
    proc = run_training("--data", make(tmp_path), "--out", out, "--max-steps", "1")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and phrase in err, err
    assert not out.exists()


def test_out_dir_of_someone_else_is_refused(tmp_path, files):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    proc = run_training("--data", files["jsonl"], "--out", out, "--max-steps", "1")
    assert proc.returncode == 2 and "not a training output" in proc.stderr
    assert (out / "thesis.tex").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_resume_with_other_settings_is_refused(tmp_path, files):
    out = tmp_path / "run"
    Trainer(_settings(files["jsonl"], max_steps=1), out, threads=1, progress=False).run()
    with pytest.raises(DataError, match="other settings \\(lr\\)"):
        Trainer(_settings(files["jsonl"], max_steps=1, lr=1.0), out, threads=1, progress=False)


def test_evaluate_cli_reports_the_trainers_perplexity(tmp_path, files):
    out = tmp_path / "run"
    p = Trainer(_settings(files["jsonl"], max_steps=4, eval_every=4), out, threads=1, progress=False).run()
    proc = subprocess.run([sys.executable, "-m", "dialogpt_onnx.training.evaluate", str(out), "--data",
                           str(files["jsonl"]), "--conversations", "3"], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1500:]
    ppl = float(proc.stdout.split("reply perplexity ")[1].split()[0])
    # the trainer's figure on the same 3 conversations, from its fp32 weights (the checkpoint is fp16)
    assert abs(ppl / p.eval_ppl - 1) < 0.01, (ppl, p.eval_ppl)
    bad = subprocess.run([sys.executable, "-m", "dialogpt_onnx.training.evaluate", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_a_run_from_before_a_new_setting_resumes(tmp_path, files):
    """A setting added to the code after a run started counts as its default when resuming that run."""
    s = _settings(files["jsonl"])
    out = tmp_path / "run"
    Trainer(s, out, threads=1, progress=False).run(minutes=1e-9)
    path = out / "train_state" / "state.pt"
    state = torch.load(path, weights_only=False)
    del state["settings"]["reverse"]  # as written by the code before `reverse` existed
    torch.save(state, path)
    assert Trainer(s, out, threads=1, progress=False).run().finished
    with pytest.raises(DataError, match="other settings \\(reverse\\)"):
        Trainer(_settings(files["jsonl"], reverse=True), out, threads=1, progress=False)


def test_reverse_trains_on_dialogues_read_backwards(tmp_path, files, tok):
    fwd = Trainer(_settings(files["jsonl"]), tmp_path / "fwd", threads=1, progress=False)
    bwd = Trainer(_settings(files["jsonl"], reverse=True), tmp_path / "bwd", threads=1, progress=False)
    convs = read_dialogues(files["jsonl"])
    first = [encode_turn(tok, t, EOS_TOKEN_ID) for t in convs[0]]
    rev = [encode_turn(tok, t, EOS_TOKEN_ID) for t in convs[0][::-1]]
    assert dialogue_windows(first, 64)[0] in fwd.batches.windows and dialogue_windows(rev, 64)[0] in bwd.batches.windows
    assert bwd.eval_pairs[0][1] == encode_turn(tok, read_dialogues(files["jsonl"])[0][-2], EOS_TOKEN_ID)
    p = bwd.run()
    assert p.finished and json.loads((tmp_path / "bwd" / "config.json").read_text())["_training"]["settings"]["reverse"]


def test_short_runs_warm_up_within_the_run_and_finished_runs_extend(tmp_path, files):
    """The default warm-up (200) on a 4-step run is clamped to a quarter of it; a finished run resumed with a
    larger --max-steps trains on from where it stopped; re-running a finished one trains nothing and says so."""
    from dialogpt_onnx.training.trainer import _lr

    s = _settings(files["jsonl"], warmup=200, max_steps=4)
    assert [round(_lr(s, i, 4) / s.lr, 3) for i in range(4)] == [1.0, 1.0, 0.775, 0.325]  # no 200-step ramp
    out = tmp_path / "run"
    first = Trainer(s, out, threads=1, progress=False).run()
    assert first.finished and first.step == 4
    again = subprocess.run([sys.executable, "-m", "dialogpt_onnx.training", "--data", str(files["jsonl"]), "--eval",
                            str(files["jsonl"]), "--layers", "2", "--width", "32", "--heads", "2", "--length", "64",
                            "--batch", "2", "--lr", "3e-3", "--warmup", "200", "--max-steps", "4", "--eval-every", "0",
                            "--eval-conversations", "3", "--seed", "1", "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "already finished" in again.stdout and "nan" not in again.stdout
    more = Trainer(_settings(files["jsonl"], warmup=200, max_steps=6), out, threads=1, progress=False).run()
    assert more.finished and more.step == 6 and more.ran == 2
    with pytest.raises(DataError, match="at least 6"):
        Trainer(_settings(files["jsonl"], warmup=200, max_steps=3), out, threads=1, progress=False)


def test_checkpoints_are_plain_hugging_face_dirs(tmp_path, files):
    """What the trainer writes, and the bundled model, load with transformers' Auto classes without a
    warning: the architecture is named and generation settings sit in generation_config.json."""
    import logging
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    out = tmp_path / "run"
    Trainer(_settings(files["jsonl"], max_steps=1), out, threads=1, progress=False).run()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        for d in (out, ROOT / "models" / "chat-8x256"):
            cfg = json.loads((d / "config.json").read_text())
            assert cfg["architectures"] == ["GPT2LMHeadModel"] and "top_k" not in cfg and "do_sample" not in cfg
            assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == 50256
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                model = AutoModelForCausalLM.from_pretrained(d)
                tok = AutoTokenizer.from_pretrained(d)
            assert type(model).__name__ == "GPT2LMHeadModel" and tok.eos_token_id == 50256
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert [r.getMessage() for r in records] == []


def test_a_short_fine_tune_of_the_bundled_model_lowers_its_loss_on_the_file(tmp_path, files):
    """Four steps from the bundled model with the defaults (lr 5e-5, --warmup 200, clamped to the run)
    visibly lower the reply perplexity on the fine-tuning file (before the clamp: 116.3 -> 116.3)."""
    s = Settings(data=(str(files["jsonl"]),), eval=str(files["jsonl"]), init=str(ROOT / "models" / "chat-8x256"),
                 length=64, batch=2, lr=5e-5, max_steps=4, eval_every=0, eval_conversations=3, seed=1)
    trainer = Trainer(s, tmp_path / "ft", threads=1, progress=False)
    before = trainer.evaluate()
    after = trainer.run().eval_ppl
    assert after < 0.97 * before, (before, after)


def test_checkpoints_are_accepted_by_llama_cpps_converter(tmp_path, files):
    """llama.cpp's convert_hf_to_gguf.py (the one the benchmark uses) turns what the trainer writes and both
    bundled models into GGUF files (it refused a config with `"architectures": null`). Runs where llama.cpp's
    extra is installed (`.[llama]`) or $LLAMA_CPP_CONVERT names the script."""
    import importlib.util

    if not os.environ.get("LLAMA_CPP_CONVERT") and not all(
            importlib.util.find_spec(m) for m in ("llama_cpp", "gguf")):
        pytest.skip("llama.cpp's converter is not installed: pip install -e '.[llama]' or set LLAMA_CPP_CONVERT")
    from benchmarks.engines import llama_cpp_converter

    script = llama_cpp_converter(tmp_path / "llama.cpp-src")
    out = tmp_path / "run"
    Trainer(_settings(files["jsonl"], max_steps=1), out, threads=1, progress=False).run()
    for d in (out, ROOT / "models" / "chat-8x256", ROOT / "models" / "chat-8x256-backward"):
        gguf = tmp_path / f"{d.name}.gguf"
        proc = subprocess.run([sys.executable, str(script), str(d), "--outfile", str(gguf), "--outtype", "f32"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and gguf.stat().st_size > 1_000_000, proc.stderr[-2000:]
