"""The manifest: the one contract between the exporter (writes it) and the runtime (reads it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelDirError
from .graph_io import GraphIO

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    io: GraphIO

    @property
    def n_layer(self) -> int:
        return int(self.raw["model"]["n_layer"])

    @property
    def n_head(self) -> int:
        return int(self.raw["model"]["n_head"])

    @property
    def head_dim(self) -> int:
        return int(self.raw["model"]["head_dim"])

    @property
    def n_positions(self) -> int:
        return int(self.raw["model"]["n_positions"])

    @property
    def vocab_size(self) -> int:
        return int(self.raw["model"]["vocab_size"])

    @property
    def eos_token_id(self) -> int:
        return int(self.raw["model"]["eos_token_id"])

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token costs per row: K and V, every layer, float32."""
        return 2 * self.n_layer * self.n_head * self.head_dim * 4

    @property
    def variant(self) -> str:
        return str(self.raw["variant"])

    @property
    def graph(self) -> str:
        return str(self.raw.get("graph", "contrib"))

    @property
    def all_logits(self) -> bool:
        return self.io.all_logits


# What the runtime reads from a manifest; a manifest lacking any of it is refused in one line.
_MODEL_KEYS = ("n_layer", "n_head", "head_dim", "n_positions", "vocab_size", "eos_token_id")
_IO_KEYS = ("inputs", "outputs", "past_key", "past_value", "present_key", "present_value", "logits")


def _check_structure(raw: dict[str, Any], path: Path) -> GraphIO:
    def bad(what: str) -> ModelDirError:
        return ModelDirError(f"{path} {what}: re-export the model")

    if not isinstance(raw.get("files"), dict) or not all(isinstance(v, str) for v in raw["files"].values()):
        raise bad("has no valid 'files' table")
    model, io = raw.get("model"), raw.get("io")
    if not isinstance(model, dict):
        raise bad("lacks 'model'")
    for k in _MODEL_KEYS:
        if isinstance(model.get(k), bool) or not isinstance(model.get(k), int) or model[k] < (0 if k == "eos_token_id"
                                                                                              else 1):
            raise bad(f"lacks a valid model.{k}")
    if not isinstance(io, dict):
        raise bad("lacks 'io'")
    for k in _IO_KEYS:
        if k not in io:
            raise bad(f"lacks io.{k}")
    if not isinstance(io["inputs"], dict) or not isinstance(io["outputs"], dict) or "logits" not in io["outputs"]:
        raise bad("has malformed io.inputs / io.outputs")
    if not isinstance(raw.get("variant"), str):
        raise bad("lacks 'variant'")
    try:
        return GraphIO.from_manifest(io)
    except (KeyError, TypeError) as e:
        raise bad(f"has a malformed io table ({e})") from None


def read_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and check a model dir: manifest present, known version, well formed, every listed file present
    with its recorded size, and (verify=True) its sha256 intact. Hashing costs ~1 s per GB."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model dir {model_dir} does not exist: export one with `python -m export SOURCE DIR`")
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{model_dir} has no {MANIFEST}: it is not an exported model dir; re-export it")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelDirError(f"{path} is not valid JSON: re-export the model") from None
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path} is not a JSON object: re-export the model")
    version = raw.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {version}, written by a newer dialogpt-onnx; this one "
                            f"reads version {FORMAT_VERSION}: upgrade dialogpt-onnx")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {version!r}, this runtime reads {FORMAT_VERSION}: "
                            "re-export the model with this version of dialogpt-onnx")
    io = _check_structure(raw, path)
    files: dict[str, str] = raw["files"]
    sizes: dict[str, int] = raw.get("file_sizes", {})
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if name not in files:
            raise ModelDirError(f"{path} lists no {name}: re-export the model")
    for name, digest in files.items():
        f = model_dir / name
        if Path(name).name != name or not f.is_file():
            raise ModelDirError(f"{model_dir} is incomplete: {name} is missing; re-export or copy the whole dir")
        if name in sizes and f.stat().st_size != sizes[name]:
            raise ModelDirError(f"{f} is {f.stat().st_size} bytes, the manifest says {sizes[name]} (truncated or "
                                "replaced): re-export or copy the file again")
        if verify and sha256(f) != digest:
            raise ModelDirError(f"{f} does not match the sha256 in {MANIFEST} (corrupted or replaced): "
                                "re-export or copy the file again")
    return Manifest(raw, io)


def write_manifest(model_dir: Path, raw: dict[str, Any]) -> None:
    """Fill in format version and file digests, then write manifest.json (called by the exporter)."""
    raw = {"format_version": FORMAT_VERSION, **raw}
    written = [f for f in sorted(model_dir.iterdir()) if f.is_file() and f.name != MANIFEST]
    raw["files"] = {f.name: sha256(f) for f in written}
    raw["file_sizes"] = {f.name: f.stat().st_size for f in written}  # checked at every load, even unverified
    (model_dir / MANIFEST).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
