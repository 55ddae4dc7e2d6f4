"""The onnxruntime side of a loaded graph: session options, the session, the graph's I/O names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import onnxruntime as ort

from .batched_graph import with_query_seqlens
from .errors import ModelDirError
from .manifest import (
    MODEL_FILE,
    OPTIMIZATION_LEVELS,
    ORT_MODEL_FILE,
    Manifest,
    ModelFormat,
    Optimization,
    reexport,
)
from .memory import release_freed_memory
from .ort_floor import check_runtime
from .shared import shared
from .weight_cache import (
    Untrusted,
    cache_root,
    cached_graph,
    entry_dir,
    publish,
    saving_options,
    touch,
    trusted_root,
    warn,
)

_LEVELS = dict(zip(OPTIMIZATION_LEVELS, (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                         ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                         ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                         ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True))


# How long an idle intra-op thread spins before it sleeps (onnxruntime's own default spins by iteration
# count): 30 µs decoded as fast as unbounded spinning on a quiet CPU and 1.3-1.5x faster beside 1-2 busy
# processes (benchmarks/studies/contention.py, docs/benchmarks.md); None = onnxruntime's default.
SPIN_DURATION_US: int | None = 30


def _options(threads: int | None, optimization: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    if SPIN_DURATION_US is not None:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_DURATION_US))
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _LEVELS[optimization]
    so.log_severity_level = 3
    return so


class Built(NamedTuple):
    session: ort.InferenceSession
    file: Path  # what it was built from: the export's model file or the weight cache's entry


def make_session(path: Path, threads: int | None, optimization: str = "all",
                 cache_key: str | None = None, verify: bool = False, batched: bool = False) -> Built:
    """The session of the model at `path`. With `cache_key` (the model file's sha256) and the weight cache on
    (runtime.weight_cache), it is built from this machine's pre-packed copy, which the first load writes;
    with verify, that copy's files are hashed against the digest this user's load recorded. `batched`: with
    GroupQueryAttention's query_seqlens added (runtime.batched_graph; the cached copy has it already)."""
    root = cache_root() if cache_key else None
    root = trusted_root(root) if root is not None else None

    def _session(source: Path, so: ort.SessionOptions) -> Built:
        built = _source_session(source, so, batched) if source == path else _file_session(source, so)
        return Built(built, source)

    if root is None or cache_key is None:
        return _session(path, _options(threads, optimization))
    entry = entry_dir(root, cache_key, optimization, batched)
    try:
        graph = cached_graph(entry, verify)
    except Untrusted as e:
        warn(str(e))
        return _session(path, _options(threads, optimization))
    if graph is not None:
        touch(entry)
        try:
            return _session(graph, _options(threads, optimization))
        except ModelDirError:  # a damaged entry: built again below
            pass
    so = _options(threads, optimization)
    tmp = saving_options(so, root)
    try:
        built = _session(path, so)
    except ModelDirError:
        if tmp is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # perhaps the cache's disk, not the model: try without it
        return _session(path, _options(threads, optimization))
    if tmp is not None:
        publish(tmp, entry, path)
        try:
            graph = cached_graph(entry)
        except Untrusted:  # another's entry was in the way: publish left it, and this load keeps its own copy
            graph = None
        if graph is not None:  # this process too maps the entry instead of keeping its packed copy
            del built
            release_freed_memory()
            return _session(graph, _options(threads, optimization))
    return built


def _source_session(path: Path, so: ort.SessionOptions, batched: bool) -> ort.InferenceSession:
    """The export's own model file, with query_seqlens added when `batched`."""
    if not batched:
        return _file_session(path, so)
    try:
        edited = with_query_seqlens(path.read_bytes())
    except (OSError, ValueError, IndexError) as e:
        raise ModelDirError(f"{path} is not a loadable ONNX model ({e}): {reexport(path.parent)}") from None
    if edited is None:
        return _file_session(path, so)
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    return _file_session(path, so, edited)


def _file_session(path: Path, so: ort.SessionOptions, model: bytes | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model if model is not None else str(path), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one clear line
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"{path} is not a loadable ONNX model ({first}): {reexport(path.parent)}") from None


class OrtGraph:
    """A loaded graph: session, I/O names, context. Read-only after construction: safe to share between
    threads (onnxruntime's `run` is thread-safe)."""

    batched = False  # ContribGraph: add GroupQueryAttention's query_seqlens where onnxruntime reads it

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None,
                 max_length: int | None = None, optimization: Optimization | None = None,
                 model_format: ModelFormat = "onnx", weight_cache: bool = False,
                 verify: bool = False) -> None:
        self.m = manifest
        self.optimization = optimization or manifest.optimization
        self.model_format = model_format
        path = Path(model_dir) / (ORT_MODEL_FILE if model_format == "ort" else MODEL_FILE)
        check_runtime(manifest.onnxruntime_needed(model_format), str(path))
        # several models of one export hold one session: one copy of the weights per process
        key = (manifest.raw.get("files") or {}).get(MODEL_FILE) if weight_cache and model_format == "onnx" else None
        batched = self.batched and model_format == "onnx"
        self._shared = shared(path, lambda: make_session(path, threads, self.optimization, key, verify, batched),
                              "session", threads or os.cpu_count() or 1, self.optimization, batched)
        self.ort_session, self.model_file = self._shared.value
        self.names = manifest.io.inputs
        self.logits_name = manifest.io.logits
        self.max_length = min(max_length or manifest.shape.n_positions, manifest.shape.n_positions)
        have = {i.name for i in self.ort_session.get_inputs()}
        want = set(self.names.values()) - {""}
        if not want <= have:
            raise ModelDirError(f"model.onnx lacks inputs {sorted(want - have)} listed in the manifest: "
                                f"{reexport(Path(model_dir))}")
        self._check_shape(have)

    def _check_shape(self, have: set[str]) -> None:
        """The manifest's model shape is the graph's (layers, heads, head size, vocabulary): a manifest that
        describes another model is refused here, in one line, not by onnxruntime at the first run."""
        shape, io = self.m.shape, self.m.io
        kv = {i.name: i.shape for i in self.ort_session.get_inputs()}
        layers = 0
        while io.kv_name("past", "key", layers) in have:
            layers += 1
        wrong = []
        if layers != shape.n_layer:
            wrong.append(f"n_layer {shape.n_layer}, the graph has {layers} layers")
        dims = kv.get(io.kv_name("past", "key", 0), [])
        for name, at, value in (("n_head", 1, shape.n_head), ("head_dim", 3, shape.head_dim)):
            if len(dims) == 4 and isinstance(dims[at], int) and dims[at] != value:
                wrong.append(f"{name} {value}, the graph's is {dims[at]}")
        logits: list = next((o.shape for o in self.ort_session.get_outputs() if o.name == io.logits), [])
        if logits and isinstance(logits[-1], int) and logits[-1] != shape.vocab_size:
            wrong.append(f"vocab_size {shape.vocab_size}, the graph's is {logits[-1]}")
        if wrong:
            raise ModelDirError(f"manifest.json does not describe model.onnx ({'; '.join(wrong)}): restore its "
                                "manifest.json, or export a new one: `dialogpt-onnx export SOURCE NEW_DIR`")
