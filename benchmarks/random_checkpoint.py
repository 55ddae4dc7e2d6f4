"""Full-size DialoGPT architectures with random weights, for speed and size measurements only
(real weights cannot be downloaded here). The config says so in `_weights`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

# name -> (DialoGPT config it derives from, overrides). "tiny" is the demo / test size: the real
# vocabulary and context, 2 layers of width 64.
SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "tiny": ("small", {"n_layer": 2, "n_embd": 64, "n_head": 4}),
    "small": ("small", {}),
    "medium": ("medium", {}),
    "large": ("large", {}),
}
LABEL = "random weights — speed only"


def make_random_checkpoint(size: str, out: Path, seed: int = 0) -> Path:
    """Write an HF-format dir (config.json, model.safetensors, vocab.json, merges.txt)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dialogpt_onnx.corpora import dialogpt_config, tokenizer_files

    base, overrides = SIZES[size]
    raw = {**dialogpt_config(base), **overrides}
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**raw)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg["_weights"] = LABEL
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, path in tokenizer_files().items():
        shutil.copyfile(path, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("size", choices=list(SIZES))
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_random_checkpoint(a.size, Path(a.out), a.seed))


if __name__ == "__main__":
    main()
