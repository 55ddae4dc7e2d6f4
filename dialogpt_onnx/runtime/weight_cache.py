"""This machine's copy of a model with its weights pre-packed, memory-mapped at every later load.

onnxruntime re-arranges a model's weights into its kernels' layouts (pre-packing) at every session start,
into the process's own memory. At the first load on a machine the runtime has onnxruntime save that result
(the optimized graph, and the pre-packed weights in a data file beside it); later loads map the data file:
they skip the packing, and processes running one model share its pages instead of holding a copy each
(DialoGPT-small int8, 4 processes: 444 MB together instead of 942; docs/footprint.md). The layouts belong to
the CPU's instruction set and the onnxruntime version, so an entry is keyed by them and by the model file's
sha256, and is never shipped with a model.

Where: $DIALOGPT_ONNX_CACHE, else $XDG_CACHE_HOME/dialogpt-onnx, else ~/.cache/dialogpt-onnx; "off" turns it
off. Every entry is a directory of its own, written under a temporary name and renamed into place once
complete; an entry whose files are not the sizes recorded is rebuilt. A cache that cannot be written is
skipped (the model loads as it would without).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort

GRAPH = "model.onnx"
DATA = "model.onnx.data"
RECORD = "entry.json"


def cache_root() -> Path | None:
    setting = os.environ.get("DIALOGPT_ONNX_CACHE", "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dialogpt-onnx"


def cpu_signature() -> str:
    """What decides the pre-packed layouts: the CPU's model and instruction-set flags."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
        lines = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return " ".join(v.strip() for k, v in lines.items() if k.strip() in ("model name", "flags"))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def entry_dir(root: Path, model_sha256: str, optimization: str) -> Path:
    key = "|".join((model_sha256, ort.__version__, optimization, cpu_signature()))
    return root / hashlib.sha256(key.encode()).hexdigest()[:32]


def cached_graph(entry: Path) -> Path | None:
    """The entry's graph when its files are complete (the sizes it recorded), else None."""
    try:
        sizes = json.loads((entry / RECORD).read_text())["sizes"]
        if all((entry / name).stat().st_size == size for name, size in sizes.items()):
            return entry / GRAPH
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def saving_options(so: ort.SessionOptions, root: Path) -> Path | None:
    """Make the session about to be built write a new entry into a temporary dir under `root` (returned), or
    None when the cache cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    except OSError:
        return None
    so.optimized_model_filepath = str(tmp / GRAPH)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA)
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return tmp


def publish(tmp: Path, entry: Path, source: Path) -> None:
    """Record the sizes and rename the temporary dir into place; another process that got there first wins."""
    try:
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
        if GRAPH not in sizes:  # nothing saved (a graph onnxruntime cannot serialize): no entry
            raise OSError("no graph saved")
        (tmp / RECORD).write_text(json.dumps({"source": str(source), "onnxruntime": ort.__version__,
                                              "sizes": sizes}))
        if cached_graph(entry) is not None:  # another process published it meanwhile
            raise OSError("entry exists")
        if entry.exists():
            shutil.rmtree(entry)  # an incomplete or damaged entry (cached_graph refused it)
        tmp.rename(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
