from __future__ import annotations

import pytest
from checkpoints import ROOT

from dialogpt_onnx.export import ExportOptions, export_model


@pytest.fixture(scope="session")
def bundled_exports(tmp_path_factory) -> dict:
    """The bundled trained model (models/chat-8x256) in each variant: a trained model's margins make greedy
    tokens comparable across onnxruntime builds (a random one's near-ties are not)."""
    out = {}
    for variant in ("fp32", "int8", "int4"):
        d = tmp_path_factory.mktemp(f"bundled_{variant}") / "model"
        export_model(ROOT / "models" / "chat-8x256", d, ExportOptions(variant=variant, progress=False, n_prompts=1,
                                                                       parity_tokens=8))
        out[variant] = d
    return out
