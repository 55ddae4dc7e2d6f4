"""Tiny GPT-2 checkpoints derived from the real DialoGPT configs, in every on-disk form the exporter takes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dialogpt_onnx.corpora import DIALOGPT_CONFIGS as CONFIGS
from dialogpt_onnx.corpora import DIALOGPT_TOKENIZER as TOKENIZER
from dialogpt_onnx.corpora import TOPICAL_CHAT, dialogpt_config

__all__ = ["CONFIGS", "ROOT", "TOKENIZER", "TOPICAL_CHAT"]

ROOT = Path(__file__).resolve().parents[1]  # the repository: where `python -m ...` runs in tests

# Small enough for CI, big enough that attention, MLP and the tied head all matter.
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4}


def original_config(size: str = "small", **overrides: int) -> dict:
    """The original DialoGPT config (no model_type), shrunk by overrides."""
    raw = dialogpt_config(size)
    raw.update(overrides)
    return raw


def tiny_model(seed: int = 0, size: str = "small", **overrides: int) -> GPT2LMHeadModel:
    raw = original_config(size, **{**TINY, **overrides})
    torch.manual_seed(seed)
    config = GPT2Config(**raw)
    config._attn_implementation = "eager"  # the reference math (SDPA ignores scale_attn_by_inverse_layer_idx)
    model = GPT2LMHeadModel(config).eval()
    # Random init with std 0.02 gives near-uniform logits; scale up so greedy decoding is decisive
    # and parity checks compare real preferences, not ties.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(4.0)
    return model


def copy_tokenizer(dst: Path) -> None:
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER / f, dst / f)


def save_hf(model: GPT2LMHeadModel, dst: Path, safe: bool = True) -> Path:
    """Hugging Face form: config.json with model_type, model.safetensors or pytorch_model.bin."""
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=safe)
    if not safe:  # transformers 5 always writes safetensors; make the .bin form by hand
        for f in dst.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), dst / "pytorch_model.bin")
    copy_tokenizer(dst)
    return dst


def save_original(model: GPT2LMHeadModel, dst: Path, with_tokenizer: bool = False) -> Path:
    """Original DialoGPT repo form: config without model_type, fp16 .pkl state dict whose keys lack the
    `transformer.` prefix and name the head `lm_head.decoder.weight`."""
    dst.mkdir(parents=True, exist_ok=True)
    raw = {k: v for k, v in model.config.to_dict().items()
           if k in {"n_layer", "n_embd", "n_head", "n_positions", "n_ctx", "vocab_size",
                    "layer_norm_epsilon", "initializer_range"}}
    (dst / "config.json").write_text(json.dumps(raw, indent=2))
    sd = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("transformer.")
        k = "lm_head.decoder.weight" if k == "lm_head.weight" else k
        sd[k] = v.half()
    torch.save(sd, dst / "small_ft.pkl")
    if with_tokenizer:
        copy_tokenizer(dst)
    return dst


def fp16_rounded(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """The fp32 model an fp16 checkpoint of `model` really holds (for parity against the original form)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def copy_writable(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint or model dir whose files a test may then break."""
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst
