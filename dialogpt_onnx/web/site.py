"""`dialogpt-onnx web MODEL_DIR OUT_DIR`: a static site that chats with an export in the browser, the model
running in the page (onnxruntime-web's WebAssembly build). Any static file server serves it:

    python -m http.server -d OUT_DIR 8080      # then open http://127.0.0.1:8080

OUT_DIR gets the chat page, dialogpt.mjs (this package's JS runtime), the export's model.onnx, manifest.json and
tokenizer.json, and onnxruntime-web's three files under ort/ (from --onnxruntime-web, or npm into a cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from dialogpt_onnx.runtime.errors import UsageError
from dialogpt_onnx.runtime.manifest import MANIFEST, MODEL_FILE, TOKENIZER_FILE, read_manifest

HERE = Path(__file__).parent
ORT_WEB_VERSION = "1.31.1"  # the newest on npm (2026-12-03); the exports need >= 1.23 (runtime.ort_floor)
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MARK = ".dialogpt-web"  # what this command wrote: it may replace such a dir, never another


def onnxruntime_web(given: str | None) -> Path:
    """onnxruntime-web's dist/ dir: given (a package or its dist/), or npm-installed into the user's cache."""
    if given is not None:
        for d in (Path(given), Path(given) / "dist", Path(given) / "node_modules" / "onnxruntime-web" / "dist"):
            if all((d / f).is_file() for f in ORT_WEB_FILES):
                return d
        raise UsageError(f"--onnxruntime-web {given} holds no {', '.join(ORT_WEB_FILES)}: give the dir of "
                         "`npm install onnxruntime-web`", "onnxruntime_web")
    caches = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = caches / "dialogpt-onnx" / f"ort-web-{ORT_WEB_VERSION}"
    dist = cache / "node_modules" / "onnxruntime-web" / "dist"
    if all((dist / f).is_file() for f in ORT_WEB_FILES):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError("onnxruntime-web is needed and npm was not found: install Node.js, or give "
                         "--onnxruntime-web DIR (a dir where `npm install onnxruntime-web` ran)", "onnxruntime_web")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "package.json").write_text('{"private": true}\n')
    print(f"fetching onnxruntime-web {ORT_WEB_VERSION} with npm into {cache}", flush=True)
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", f"onnxruntime-web@{ORT_WEB_VERSION}"], cwd=cache,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not all((dist / f).is_file() for f in ORT_WEB_FILES):
        last = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise UsageError(f"npm could not install onnxruntime-web ({last}): give --onnxruntime-web DIR",
                         "onnxruntime_web")
    return dist


def make_site(model_dir: str | Path, out_dir: str | Path, ort_web: str | None = None,
              overwrite: bool = False) -> Path:
    """Write the site; returns OUT_DIR. Refuses an OUT_DIR that holds anything this command did not write."""
    src, out = Path(model_dir), Path(out_dir)
    manifest = read_manifest(src)  # a model dir the runtime can load, or one line saying why not
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).is_file():
            raise UsageError(f"{out} is not empty and was not written by `dialogpt-onnx web`: choose a new dir",
                             "out_dir")
        if not overwrite:
            raise UsageError(f"{out} holds a site already: add --overwrite to replace it", "overwrite")
    dist = onnxruntime_web(ort_web)
    (out / "ort").mkdir(parents=True, exist_ok=True)
    for f in ORT_WEB_FILES:
        shutil.copyfile(dist / f, out / "ort" / f)
    for f in (MODEL_FILE, MANIFEST, TOKENIZER_FILE):
        shutil.copyfile(src / f, out / f)
    shutil.copyfile(HERE / "chat.html", out / "index.html")
    shutil.copyfile(HERE / "dialogpt.mjs", out / "dialogpt.mjs")
    (out / MARK).write_text(json.dumps({"model": str(src.resolve()), "variant": manifest.variant,
                                        "onnxruntime-web": str(dist)}) + "\n")
    return out
