"""The pipeline does each thing once: one tokenizer build, one torch model, one hash per file, one
manifest write; the manifest it writes is the one the runtime reads."""

from __future__ import annotations

from collections import Counter

import dialogpt_onnx.runtime.manifest as manifest_module
from dialogpt_onnx.export import ExportOptions, export_model
from dialogpt_onnx.export import pipeline as pipeline_module


def test_export_builds_hashes_and_writes_once(tmp_path, hf_dir, monkeypatch):
    calls: Counter[str] = Counter()
    hashed: Counter[str] = Counter()

    def counting(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    real_sha = manifest_module.sha256
    monkeypatch.setattr(manifest_module, "sha256", lambda p, *a: (hashed.update([p.name]), real_sha(p, *a))[1])
    for name in ("build_tokenizer", "torch_model", "write_manifest"):
        counting(pipeline_module, name)
    out = tmp_path / "out"
    export_model(hf_dir, out, ExportOptions(variant="int8", progress=False, n_prompts=1, parity_tokens=4))
    assert calls == {"build_tokenizer": 1, "torch_model": 1, "write_manifest": 1}
    assert hashed == {f: 1 for f in ("model.onnx", "tokenizer.json", "genai_config.json", "tokenizer_config.json",
                                     "config.json")}
    m = manifest_module.read_manifest(out)  # what was written is what the runtime reads (sha256 verified)
    assert m.shape.n_layer == 2 and m.variant == "int8" and m.raw["parity"]["passed"]
