"""Runtime faults: broken model dirs, bad API arguments, and chats whose turns do not finish normally."""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import ROOT, copy_writable
from processes import one_line

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.errors import ModelDirError
from dialogpt_onnx.runtime.manifest import FORMAT_VERSION, sha256


# -- model dirs -------------------------------------------------------------------------
def run_runtime(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx.runtime", *map(str, args)], cwd=ROOT, input=stdin,
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


# seeded garbage: every run checks the same bytes
BAD_DIRS = {
    "missing": (lambda d: shutil.rmtree(d), "does not exist"),
    "wrong sha256": (lambda d: _flip_bytes(d / "model.onnx"), "does not match the sha256"),
    "truncated onnx": (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:5000]),
                       "is 5000 bytes, the manifest says"),
    "truncated onnx, digest fixed": (lambda d: _break_onnx_consistently(d, (d / "model.onnx").read_bytes()[:9999]),
                                     "not a loadable ONNX model"),
    "random bytes as onnx": (lambda d: _break_onnx_consistently(d, random.Random(1).randbytes(20000)),
                             "not a loadable ONNX model"),
    "newer format": (lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)),
                     f"this one reads version {FORMAT_VERSION}: upgrade dialogpt-onnx"),
    "older format": (lambda d: _edit_manifest(d, lambda m: m.update(format_version=0)),
                     "re-export it: `dialogpt-onnx export "),
    "a checkpoint, not an export": (lambda d: ((d / "manifest.json").unlink(), (d / "config.json").write_text("{}")),
                                    "is a checkpoint, not an export: export it first with `dialogpt-onnx export "),
    "needs a newer onnxruntime": (lambda d: _edit_manifest(d, lambda m: m.update(onnxruntime={"requires": "9.1.0"})),
                                  "model.onnx needs onnxruntime >= 9.1.0, this is "),
    "malformed onnxruntime table": (lambda d: _edit_manifest(d, lambda m: m.update(onnxruntime={"requires": 1.2})),
                                    "has a malformed 'onnxruntime' table"),
    "manifest without io": (lambda d: _edit_manifest(d, lambda m: m.pop("io")), "lacks 'io'"),
    # --overwrite would not recognize it as an export: the hint writes a new dir
    "manifest without files table": (lambda d: _edit_manifest(d, lambda m: m.pop("files")),
                                     "m-new --variant int8`"),
    "manifest without n_layer": (lambda d: _edit_manifest(d, lambda m: m["model"].pop("n_layer")),
                                 "lacks a valid model.n_layer"),
    "manifest with other heads": (lambda d: _edit_manifest(d, lambda m: m["model"].update(n_head=8, head_dim=8)),
                                  "manifest.json does not describe model.onnx (n_head 8, the graph's is 4; head_dim 8"),
    "manifest with more layers": (lambda d: _edit_manifest(d, lambda m: m["model"].update(n_layer=3)),
                                  "does not describe model.onnx (n_layer 3, the graph has 2 layers)"),
    "manifest with another vocabulary": (lambda d: _edit_manifest(d, lambda m: m["model"].update(vocab_size=50000)),
                                         "vocab_size 50000, the graph's is 50257"),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), "is not a JSON object"),
    "manifest binary": (lambda d: (d / "manifest.json").write_bytes(random.Random(2).randbytes(300)),
                        "is not valid JSON"),
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
    d = copy_writable(exported("int8"), tmp_path / "m")
    breaker, phrase = BAD_DIRS[case]
    breaker(d)
    with pytest.raises(ModelDirError, match=None) as e:
        runtime.load(d)
    assert phrase in str(e.value)
    proc = run_runtime("generate", d, "Hello")
    one_line(type("P", (), {"returncode": proc.returncode, "stderr": proc.stderr.decode()}), 2, phrase)


def test_the_hint_is_a_command_that_mends_the_dir(tmp_path, exported):
    d = copy_writable(exported("int8"), tmp_path / "m")
    _flip_bytes(d / "model.onnx")
    with pytest.raises(ModelDirError) as e:
        runtime.load(d)
    command = re.search(r"`dialogpt-onnx (export .*?)`", str(e.value)).group(1)
    assert "--variant int8" in command and command.endswith("--overwrite")
    proc = subprocess.run([sys.executable, "-m", "dialogpt_onnx", *shlex.split(command), "--quiet", "--n-prompts",
                           "1", "--parity-tokens", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert runtime.load(d).generate("Hello", max_new_tokens=2).ids


def test_no_verify_skips_hashing_but_not_sizes(tmp_path, exported):
    d = copy_writable(exported("int8"), tmp_path / "m")
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


# -- API arguments ----------------------------------------------------------------------
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
    ("word " * 1100, ValueError, "exceeds the context of"),
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


# -- chat state -------------------------------------------------------------------------
def test_a_chat_turn_over_the_context_is_refused(exported):
    with pytest.raises(runtime.ContextOverflow, match="exceeds the context"):
        runtime.load(exported("int8")).chat().send("word " * 1100)


def test_abandoned_stream_keeps_partial_reply_and_stays_consistent(exported):
    model = runtime.load(exported("fp32"))
    chat = model.chat(max_new_tokens=16, min_new_tokens=16, greedy=True)
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

