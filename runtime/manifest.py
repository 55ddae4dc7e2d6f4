"""The manifest: the one contract between the exporter (writes it) and the runtime (reads it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelDirError

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
    def io(self) -> dict[str, Any]:
        return self.raw["io"]

    @property
    def variant(self) -> str:
        return str(self.raw["variant"])

    @property
    def graph(self) -> str:
        return str(self.raw.get("graph", "contrib"))

    @property
    def all_logits(self) -> bool:
        return self.raw["io"]["logits"] == "all"


def read_manifest(model_dir: Path, check_files: bool = True) -> Manifest:
    """Read and check a model dir: manifest present, known version, every listed file present and intact."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model dir {model_dir} does not exist: export one with `python -m export SOURCE DIR`")
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{model_dir} has no {MANIFEST}: it is not an exported model dir; re-export it")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelDirError(f"{path} is not valid JSON: re-export the model") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path} has format version {version!r}, this runtime reads {FORMAT_VERSION}: "
                            "re-export the model with this version of dialogpt-onnx")
    files: dict[str, str] = raw.get("files", {})
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if name not in files:
            raise ModelDirError(f"{path} lists no {name}: re-export the model")
    for name, digest in files.items():
        f = model_dir / name
        if not f.is_file():
            raise ModelDirError(f"{model_dir} is incomplete: {name} is missing; re-export or copy the whole dir")
        if check_files and sha256(f) != digest:
            raise ModelDirError(f"{f} does not match the sha256 in {MANIFEST} (corrupted or replaced): "
                                "re-export or copy the file again")
    return Manifest(raw)


def write_manifest(model_dir: Path, raw: dict[str, Any]) -> None:
    """Fill in format version and file digests, then write manifest.json (called by the exporter)."""
    raw = {"format_version": FORMAT_VERSION, **raw}
    raw["files"] = {f.name: sha256(f) for f in sorted(model_dir.iterdir())
                    if f.is_file() and f.name != MANIFEST}
    (model_dir / MANIFEST).write_text(json.dumps(raw, indent=2) + "\n")
