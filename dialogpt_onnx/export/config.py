"""One normalized description of a GPT-2 model, whatever config style the checkpoint used."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime.checks import integer, is_number, number
from dialogpt_onnx.runtime.manifest import ModelShape
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID as DEFAULT_EOS

from .errors import ExportError

# Activations GPT-2 checkpoints use; the tanh approximations map to FastGelu, exact erf gelu to Gelu.
TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
ERF_GELUS = {"gelu"}


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int
    n_inner: int  # MLP width; GPT-2 uses 4 * n_embd when the config leaves it out
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    eos_token_id: int = DEFAULT_EOS  # <|endoftext|>: DialoGPT ends every turn with it
    bos_token_id: int = DEFAULT_EOS

    @property
    def parameters(self) -> int:
        """Weights the config describes (the head tied to the embedding)."""
        e, inner = self.n_embd, self.n_inner
        per_layer = 4 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * inner + inner) + (inner * e + e)
        return self.vocab_size * e + self.n_positions * e + self.n_layer * per_layer + 2 * e

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def shape(self) -> ModelShape:
        """What the runtime needs of it (the manifest's `model` table)."""
        return ModelShape(self.n_layer, self.n_head, self.head_dim, self.n_positions, self.vocab_size,
                          self.eos_token_id)

    def attention_scale(self, layer: int) -> float:
        scale = self.head_dim**-0.5 if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers GPT2Config dict (used for parity checks)."""
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "vocab_size": self.vocab_size,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": True,
        }


_REQUIRED = ("n_layer", "n_embd", "n_head", "vocab_size")


def config_from_dict(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Accept new-style (model_type=gpt2) and original DialoGPT (no model_type) configs; refuse others."""
    model_type = raw.get("model_type")
    archs = raw.get("architectures") or []
    if model_type is not None and model_type != "gpt2":
        raise ExportError(
            f"{where} describes a '{model_type}' model, not GPT-2: give a GPT-2 / DialoGPT checkpoint"
        )
    if archs and not any(a.startswith("GPT2") for a in archs):
        raise ExportError(f"{where} names architectures {archs}, not GPT-2: give a GPT-2 / DialoGPT checkpoint")
    # Old checkpoints carry no model_type: recognise GPT-2 by its own key names.
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ExportError(
            f"{where} lacks GPT-2 keys {missing}: give a GPT-2 / DialoGPT config (n_layer, n_embd, n_head, vocab_size)"
        )
    activation = raw.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in TANH_GELUS | ERF_GELUS:
        raise ExportError(f"{where} uses activation '{activation}', which this exporter does not build: "
                          f"use one of {sorted(TANH_GELUS | ERF_GELUS)}")
    def bad(message: str, _: str) -> ExportError:
        return ExportError(f"{where}: {message}: fix the config")

    def count(key: str, default: object = None, minimum: int = 1) -> int:
        return integer(key, raw.get(key, default), minimum, error=bad)

    def flag(key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise ExportError(f"{where}: {key} must be true or false, got {value!r}: fix the config")
        return value

    n_embd, n_head, vocab = count("n_embd"), count("n_head"), count("vocab_size")
    if n_embd % n_head:
        raise ExportError(f"{where}: n_embd {n_embd} is not divisible by n_head {n_head}: fix the config")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    number("layer_norm_epsilon", eps, "a number in (0, 1)", is_number(eps) and 0 < eps < 1, error=bad)
    eos = count("eos_token_id", DEFAULT_EOS, minimum=0)
    bos = count("bos_token_id", eos, minimum=0)
    for key, value in (("eos_token_id", eos), ("bos_token_id", bos)):
        if value >= vocab:
            raise ExportError(f"{where}: {key} {value} lies outside the vocabulary of {vocab}: fix the config")
    cfg = ModelConfig(
        n_layer=count("n_layer"),
        n_embd=n_embd,
        n_head=n_head,
        n_positions=count("n_positions", raw.get("n_ctx", 1024)),
        vocab_size=vocab,
        n_inner=count("n_inner", 4 * n_embd) if raw.get("n_inner") is not None else 4 * n_embd,
        layer_norm_epsilon=float(eps),
        activation=activation,
        scale_attn_weights=flag("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=flag("scale_attn_by_inverse_layer_idx", False),
        eos_token_id=eos,
        bos_token_id=bos,
    )
    fits_memory(cfg, where)
    return cfg


def fits_memory(cfg: ModelConfig, where: str) -> None:
    """Refuse, before anything is allocated, a config whose fp32 weights alone cannot fit this machine's
    memory (an export holds them and a graph built from them: about 2x)."""
    need = 4 * cfg.parameters
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound to check against
        return
    if need > have:
        raise ExportError(f"{where} describes {cfg.parameters / 1e9:.1f} B parameters ({need / 2**30:.1f} GiB in "
                          f"fp32), more than this machine's {have / 2**30:.1f} GiB of memory: check n_layer, n_embd, "
                          "n_inner, n_positions and vocab_size")


def load_config(path: Path) -> ModelConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix or replace it") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path} is not a text file (not UTF-8): give the checkpoint's config.json") from None
    except OSError as e:
        raise ExportError(f"cannot read {path} ({e.strerror}): check its permissions") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{path} is not a JSON object: give a GPT-2 config.json")
    return config_from_dict(raw, where=str(path))
