"""The oldest onnxruntime an export runs on, token for token. Each op's floor is measured, not read from
release notes: greedy replies of the bundled model's exports compared with those of the newest onnxruntime,
one side venv per release (docs/reach.md). The exporter writes the highest floor of the graph's ops into the
manifest; the loader refuses an older onnxruntime in one line, before onnxruntime fails in its own words."""

from __future__ import annotations

from collections.abc import Iterable

import onnxruntime as ort

from .errors import ModelDirError

OLDEST_TESTED = "1.15.0"  # the portable graph (standard ONNX ops) ran token for token on 1.15.1, the oldest tried
OP_FLOORS = {
    "GroupQueryAttention": "1.20.0",   # 1.17: no float32 kernel; 1.18: other greedy tokens
    "GatherBlockQuantized": "1.23.0",  # 1.20-1.22: no `bits` attribute (the int8 / int4 embedding)
}


def version_tuple(version: str) -> tuple[int, int, int]:
    """"1.23" -> (1, 23, 0); a local or dev suffix ("1.32.0+cpu", "1.33.0.dev1") is ignored."""
    parts = [int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit()] + [0, 0, 0]
    return parts[0], parts[1], parts[2]


def floor_of(op_types: Iterable[str]) -> str:
    """The oldest onnxruntime that runs a graph of these ops."""
    return max((OP_FLOORS.get(op, OLDEST_TESTED) for op in set(op_types)), key=version_tuple,
               default=OLDEST_TESTED)


def check_runtime(needed: str | None, where: str, installed: str = ort.__version__) -> None:
    """Refuse, in one line, a model that needs a newer onnxruntime than the one installed."""
    if needed and version_tuple(installed) < version_tuple(needed):
        raise ModelDirError(f"{where} needs onnxruntime >= {needed}, this is {installed}: "
                            f"pip install -U 'onnxruntime>={needed}'")
