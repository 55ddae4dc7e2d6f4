"""Archives someone else may have written (saved chats, the server's prefix-cache file): bounded before they
are inflated, their metadata checked as strictly as a request, token ids against the vocabulary, and a
file others can write refused. Each case was a traceback, a 4 GB allocation or a silent load before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from checkpoints import ROOT

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.archive import digest


def saved(exported, tmp_path):
    """A real saved chat of the int8 export: (path, its meta, its arrays)."""
    model = runtime.load(exported("int8"))
    chat = model.chat(seed=1, max_new_tokens=6)
    chat.send("Hi! Do you like music?")
    path = tmp_path / "chat.npz"
    chat.save(path)
    with np.load(path) as z:
        return path, json.loads(str(z["meta"])), {n: z[n] for n in z.files if n != "meta"}


def rewrite(path, meta, arrays, checksum=True):
    """What a forger does: any meta and arrays, with the checksum recomputed to match (it covers the arrays)."""
    kv = [arrays[f"kv_{i}"] for i in range(sum(n.startswith("kv_") for n in arrays))]
    if checksum:
        meta = {**meta, "sha256": digest(arrays["tokens"], arrays["turn_lengths"], *kv)}
    text = json.dumps(meta).replace('"NESTED"', "[" * 100_000 + "]" * 100_000)
    np.savez(path, meta=np.array(text), **arrays)
    path.chmod(0o600)


def restore(model_dir, path, limit_mb=None):
    """`chat --restore PATH` with one line in, under an address-space limit when given."""
    pre = None
    if limit_mb:
        def pre():
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    return subprocess.run([sys.executable, "-m", "dialogpt_onnx.runtime", "chat", str(model_dir), "--restore",
                           str(path), "--max-new-tokens", "4"], input=b"Hello\n", cwd=ROOT, capture_output=True,
                          timeout=300, preexec_fn=pre)


def one_line_refusal(proc, *phrases):
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert all(p in err for p in phrases), err


MUTATIONS = {
    "no options": lambda m, a: m.pop("options"),
    "no max_history_tokens": lambda m, a: m.pop("max_history_tokens"),
    "cached text": lambda m, a: m.update(cached="abc"),
    "cached inf": lambda m, a: m.update(cached=float("inf")),
    "logit_bias a dict": lambda m, a: m["options"].update(logit_bias={"5": 1.0}),
    "stop null": lambda m, a: m["options"].update(stop=None),
    "temperature text": lambda m, a: m["options"].update(temperature="hot"),
    "unknown option": lambda m, a: m["options"].update(bogus=1),
    "nested": lambda m, a: m.update(options="NESTED"),  # deeper than any JSON reader goes (see rewrite)
    "2-D turn_lengths": lambda m, a: a.update(turn_lengths=a["turn_lengths"].reshape(1, -1)),
    "token 10**9": lambda m, a: a.update(tokens=np.where(np.arange(len(a["tokens"])) == 0, 10**9,
                                                         a["tokens"]).astype(np.int32)),
    "token -7": lambda m, a: a.update(tokens=np.where(np.arange(len(a["tokens"])) == 0, -7,
                                                      a["tokens"]).astype(np.int32)),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_crafted_metadata_is_a_one_line_refusal(exported, tmp_path, case):
    path, meta, arrays = saved(exported, tmp_path)
    MUTATIONS[case](meta, arrays)
    rewrite(path, meta, arrays)
    proc = restore(exported("int8"), path)
    one_line_refusal(proc, str(path))
    with pytest.raises(runtime.UsageError):
        runtime.load(exported("int8")).chat(restore=path)


def test_a_declared_giant_array_and_a_zip_bomb_cost_nothing(exported, tmp_path):
    """A 10**11-element array declared in a header, and 1.5 GB of zeros deflated into a small file, are
    refused from their headers, under a 1 GB address-space limit (they were a crash, and 4.3 GB of RSS)."""
    path, meta, arrays = saved(exported, tmp_path)
    declared = tmp_path / "declared.npz"
    with zipfile.ZipFile(declared, "w") as z:
        z.writestr("meta.npy", _npy(np.array(json.dumps(meta))))
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
        header["shape"] = (10**11,)
        buf = __import__("io").BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        z.writestr("kv_0.npy", buf.getvalue() + bytes(64))
    declared.chmod(0o600)
    one_line_refusal(restore(exported("int8"), declared, limit_mb=1024), str(declared))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.npy", _npy(np.array(json.dumps(meta))))
        for name in ("tokens", "turn_lengths"):
            z.writestr(f"{name}.npy", _npy(arrays[name]))
        n = 1536 << 20
        header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
        header["shape"] = (n // 4,)
        with z.open("kv_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            zeros = bytes(64 << 20)
            for _ in range(n // len(zeros)):
                f.write(zeros)
    bomb.chmod(0o600)
    assert bomb.stat().st_size < 4 << 20
    one_line_refusal(restore(exported("int8"), bomb, limit_mb=1024), str(bomb))


def test_a_file_others_can_write_is_refused(exported, tmp_path):
    path, _, _ = saved(exported, tmp_path)
    path.chmod(0o666)
    one_line_refusal(restore(exported("int8"), path), "writable by another user")
    path.chmod(0o600)
    os.chown(path, 12345, 12345)
    one_line_refusal(restore(exported("int8"), path), "owned by")
    os.chown(path, os.getuid(), os.getgid())
    assert restore(exported("int8"), path).returncode == 0


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()
