"""The loader that picks the graph implementation the manifest names (protocols: runtime.protocols)."""

from __future__ import annotations

from pathlib import Path

from .contrib_graph import ContribGraph
from .manifest import Manifest, ModelFormat, Optimization
from .portable_graph import PortableGraph
from .protocols import Cache, Graph, RowCache


def open_graph(model_dir: Path, manifest: Manifest, threads: int | None = None, max_length: int | None = None,
               optimization: Optimization | None = None, model_format: ModelFormat = "onnx",
               weight_cache: bool = False, verify: bool = False) -> ContribGraph | PortableGraph:
    """The graph class that fits the manifest: the fast contrib graph or the portable one. `optimization`:
    onnxruntime's graph optimization level (manifest.OPTIMIZATION_LEVELS; default: the manifest's);
    `model_format`: "onnx" (model.onnx) or "ort" (model.ort, when the export wrote one); `weight_cache`: built
    from this machine's pre-packed copy (runtime.weight_cache), hashed first with `verify`."""
    cls = PortableGraph if manifest.graph == "portable" else ContribGraph
    return cls(model_dir, manifest, threads=threads, max_length=max_length, optimization=optimization,
               model_format=model_format, weight_cache=weight_cache, verify=verify)


def _conforms(contrib: ContribGraph, portable: PortableGraph) -> tuple[Graph, Graph, RowCache, Cache]:
    """Never called: a type checker proves here that both implementations satisfy the protocols."""
    return contrib, portable, contrib.new_cache(), portable.new_cache()
