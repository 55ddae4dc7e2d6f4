"""The manifest: the one contract between the exporter (writes it) and the runtime (reads it)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from .checks import is_integer
from .errors import ModelDirError
from .graph_io import GraphIO

FORMAT_VERSION = 2  # 2: GroupQueryAttention without query_seqlens; padding's position id is -1
# onnxruntime's graph optimization levels (ORT_DISABLE_ALL ... ORT_ENABLE_ALL) by the names the manifest uses;
# every exported graph is correct at each from its manifest's lowest level up (tested), "all" is the fastest
# and what parity is checked at
Optimization = Literal["off", "basic", "extended", "all"]
OPTIMIZATION_LEVELS: tuple[Optimization, ...] = get_args(Optimization)
MANIFEST = "manifest.json"
_VERSION = re.compile(r"\d{1,4}(\.\d{1,4}){1,2}")
MODEL_FILE = "model.onnx"
ORT_MODEL_FILE = "model.ort"  # with `--format ort`: the same graph in onnxruntime's own format (mobile, minimal builds)
ORT_OPERATORS_FILE = "required_operators.config"  # the operators a reduced onnxruntime build must include
ModelFormat = Literal["onnx", "ort"]
MODEL_FORMATS: tuple[ModelFormat, ...] = get_args(ModelFormat)
# what an export may be: its weights' precision, and its ops (onnxruntime's contrib ops, or standard ONNX)
Variant = Literal["fp32", "int8", "int4"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
GraphKind = Literal["contrib", "portable"]
GRAPHS: tuple[GraphKind, ...] = get_args(GraphKind)
TOKENIZER_FILE = "tokenizer.json"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelShape:
    """The shape of a GPT-2 model as far as running it goes: the manifest's `model` table. The exporter's
    ModelConfig and the trainer's settings describe a model through this one type."""

    n_layer: int
    n_head: int
    head_dim: int
    n_positions: int
    vocab_size: int
    eos_token_id: int

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token costs per row: K and V, every layer, float32."""
        return 2 * self.n_layer * self.n_head * self.head_dim * 4

    def to_manifest(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_manifest(cls, model: object) -> ModelShape:
        """Raises TypeError naming the first missing or invalid key (read_manifest turns it into one line)."""
        if not isinstance(model, dict):
            raise TypeError("lacks 'model'")
        for f in fields(cls):
            v = model.get(f.name)
            if not is_integer(v) or v < (0 if f.name == "eos_token_id" else 1):
                raise TypeError(f"lacks a valid model.{f.name}")
        return cls(**{f.name: int(model[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    shape: ModelShape
    io: GraphIO

    @property
    def variant(self) -> str:
        return str(self.raw["variant"])

    @property
    def graph(self) -> str:
        return str(self.raw.get("graph", "contrib"))

    @property
    def all_logits(self) -> bool:
        return self.io.all_logits

    @property
    def formats(self) -> tuple[str, ...]:
        """The model files the export holds: "onnx" always, "ort" with `--format ort`."""
        return ("onnx", "ort") if ORT_MODEL_FILE in (self.raw.get("files") or {}) else ("onnx",)

    def onnxruntime_needed(self, model_format: str = "onnx") -> str | None:
        """The oldest onnxruntime that runs this export's model file (runtime.ort_floor)."""
        table = self.raw.get("onnxruntime")
        if not isinstance(table, dict):
            return None
        needed = table.get("ort_format_requires" if model_format == "ort" else "requires")
        return needed if isinstance(needed, str) else None

    @property
    def optimization(self) -> str:
        """The graph optimization level the export was verified with (manifests before it: "all")."""
        return str((self.raw.get("session") or {}).get("graph_optimization_level", "all"))

    @property
    def lowest_optimization(self) -> str:
        """The lowest level that runs the graph right: "basic" where it stores constants onnxruntime must fold
        (int4's fp16 scales, export.quantize), else "off"."""
        return str((self.raw.get("session") or {}).get("min_graph_optimization_level", "off"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: Path | str = MANIFEST) -> Manifest:
        """Check the structure the runtime reads (model shape, I/O table, variant) and type it."""
        try:
            if not isinstance(raw.get("variant"), str):
                raise TypeError("lacks 'variant'")
            session = raw.get("session", {})
            for key, default in (("graph_optimization_level", "all"), ("min_graph_optimization_level", "off")):
                level = session.get(key, default) if isinstance(session, dict) else None
                if level not in OPTIMIZATION_LEVELS:
                    raise TypeError(f"has a session.{key} other than {', '.join(OPTIMIZATION_LEVELS)}")
            versions = raw.get("onnxruntime", {})
            if not isinstance(versions, dict) or not all(isinstance(v, str) and _VERSION.fullmatch(v)
                                                         for v in versions.values()):
                raise TypeError("has a malformed 'onnxruntime' table (versions such as \"1.23.0\")")
            return cls(raw, ModelShape.from_manifest(raw.get("model")), GraphIO.from_manifest(raw.get("io")))
        except TypeError as e:
            raise ModelDirError(f"{where} {e}: {reexport(Path(where).parent)}") from None


def reexport(model_dir: Path, *flags: str) -> str:
    """The hint to re-export a model dir, as the command to type: its manifest's source, variant and graph,
    over the dir itself when `--overwrite` will recognize it as an export (a format version and a files
    table, as export.outdir.previous_export_files asks), else into a new dir."""
    raw: Any = None
    with contextlib.suppress(OSError, ValueError):
        path = Path(model_dir) / MANIFEST
        if path.stat().st_size < 1 << 20:
            raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str) or raw.get("variant") not in VARIANTS:
        return "export a new one: `dialogpt-onnx export SOURCE NEW_DIR`"
    replaceable = "format_version" in raw and isinstance(raw.get("files"), dict)
    target = str(model_dir) if replaceable else f"{str(model_dir).rstrip('/')}-new"
    args = [raw["source"], target, "--variant", raw["variant"], *flags]
    if raw.get("graph") == "portable":
        args += ["--graph", "portable"]
    return f"re-export it: `dialogpt-onnx export {shlex.join(args + ['--overwrite'] * replaceable)}`"


def not_an_export(model_dir: Path) -> str:
    """Why a dir without a manifest cannot be loaded, and the command that makes it loadable."""
    if (Path(model_dir) / "config.json").is_file():  # a checkpoint (transformers' or the original form)
        target = f"{str(model_dir).rstrip('/')}-onnx"
        return (f"{model_dir} is a checkpoint, not an export: export it first with "
                f"`dialogpt-onnx export {shlex.quote(str(model_dir))} {shlex.quote(target)}`, then load {target}")
    return f"{model_dir} has no {MANIFEST}: it is not an exported model dir; export one with " \
           "`dialogpt-onnx export SOURCE DIR`"


def read_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and check a model dir: manifest present, known version, well formed, every listed file present
    with its recorded size, and (verify=True) its sha256 intact. Hashing costs ~1 s per GB."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model dir {model_dir} does not exist: export one with `dialogpt-onnx export SOURCE DIR`")
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ModelDirError(not_an_export(model_dir))
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelDirError(f"{path} is not valid JSON: {reexport(model_dir)}") from None
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path} is not a JSON object: {reexport(model_dir)}")
    version = raw.get("format_version")
    if is_integer(version) and version > FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {version}, written by a newer dialogpt-onnx; this one "
                            f"reads version {FORMAT_VERSION}: upgrade dialogpt-onnx")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {version!r}, this runtime reads {FORMAT_VERSION}: "
                            f"{reexport(model_dir)} with this version of dialogpt-onnx")
    files = raw.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelDirError(f"{path} has no valid 'files' table: {reexport(model_dir)}")
    manifest = Manifest.from_dict(raw, path)
    sizes: dict[str, int] = raw.get("file_sizes", {})
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if name not in files:
            raise ModelDirError(f"{path} lists no {name}: {reexport(model_dir)}")
    for name in files:
        f = model_dir / name
        if Path(name).name != name or not f.is_file():
            raise ModelDirError(f"{model_dir} is incomplete: {name} is missing; copy the whole dir, or "
                                f"{reexport(model_dir)}")
        if name in sizes and f.stat().st_size != sizes[name]:
            raise ModelDirError(f"{f} is {f.stat().st_size} bytes, the manifest says {sizes[name]} (truncated or "
                                f"replaced): copy the file again, or {reexport(model_dir)}")
    if verify:
        verify_files(model_dir, manifest)
    return manifest


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    """Every listed file's sha256 against the manifest's (measured 0.12 s for DialoGPT-small int8's 125 MB on
    an AVX2 EPYC: kept whole rather than sampled, docs/footprint.md)."""
    for name, digest in manifest.raw["files"].items():
        f = Path(model_dir) / name
        if sha256(f) != digest:
            raise ModelDirError(f"{f} does not match the sha256 in {MANIFEST} (corrupted or replaced): "
                                f"copy the file again, or {reexport(model_dir)}")


def file_table(model_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in a model dir but the manifest: hashed once, by the exporter."""
    written = [f for f in sorted(model_dir.iterdir()) if f.is_file() and f.name != MANIFEST]
    return {f.name: {"sha256": sha256(f), "size": f.stat().st_size} for f in written}


def write_manifest(model_dir: Path, raw: dict[str, Any], files: dict[str, dict[str, Any]]) -> Manifest:
    """Write manifest.json with the format version and the files' digests (from file_table) and return it
    as the runtime reads it (called once per export)."""
    raw = {"format_version": FORMAT_VERSION, **raw,
           "files": {k: v["sha256"] for k, v in files.items()},
           "file_sizes": {k: v["size"] for k, v in files.items()}}  # checked at every load, even unverified
    manifest = Manifest.from_dict(raw)
    (model_dir / MANIFEST).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return manifest
