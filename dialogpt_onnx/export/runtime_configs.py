"""The files other runtimes read beside model.onnx, so that one export runs in each of them as it is:

- `genai_config.json`: onnxruntime-genai (its C, C++, C#, Java, Objective-C and Python
  APIs, Android/iOS).
  Its model builder does not take GPT-2, so the exporter writes the config it would have: the decoder's
  inputs and outputs by name, the shape, and the chat defaults as its search options.
- `tokenizer_config.json`: the tokenizer's class and special tokens, which genai's tokenizer and
  transformers.js read beside tokenizer.json.
- `config.json`: the GPT-2 config transformers.js reads (the same keys as the checkpoint's).

The chat defaults come from runtime.CHAT_DEFAULTS (their one owner); what a runtime's search cannot say
(the history budget, the KV kept across turns) is the app's part (docs/reach.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime.graph_io import GraphIO
from dialogpt_onnx.runtime.manifest import MODEL_FILE
from dialogpt_onnx.runtime.sampling import CHAT_DEFAULTS

from .config import ModelConfig
from .tokenizer import EOS_TEXT

GENAI_CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
HF_CONFIG = "config.json"


def _pattern(name: str) -> str:
    return name.replace("{}", "%d")


def genai_config(cfg: ModelConfig, io: GraphIO, shared_buffer: bool) -> dict[str, Any]:
    eos = cfg.eos_token_id
    inputs = {role: name for role, name in io.inputs.items() if role in ("input_ids", "attention_mask",
                                                                           "position_ids")}
    return {
        "model": {
            # DialoGPT has no pad token. genai takes a prompt's trailing pad tokens for padding: with pad = EOS
            # it read a turn's closing <|endoftext|> as padding and answered from the logits before it (seen
            # on the portable graph, whose logits cover every position: its first greedy token was EOS)
            "type": "decoder", "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": -1,
            "vocab_size": cfg.vocab_size, "context_length": cfg.n_positions,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "dialogpt-onnx", "provider_options": []},
                "head_size": cfg.head_dim, "hidden_size": cfg.n_embd, "num_attention_heads": cfg.n_head,
                "num_key_value_heads": cfg.n_head, "num_hidden_layers": cfg.n_layer,
                "inputs": {**inputs, "past_key_names": _pattern(io.past_key),
                           "past_value_names": _pattern(io.past_value)},
                "outputs": {"logits": io.logits, "present_key_names": _pattern(io.present_key),
                            "present_value_names": _pattern(io.present_value)},
            },
        },
        "search": {
            "do_sample": bool(CHAT_DEFAULTS["do_sample"]), "top_k": int(CHAT_DEFAULTS["top_k"]), "top_p": 1.0,
            "temperature": 1.0, "no_repeat_ngram_size": int(CHAT_DEFAULTS["no_repeat_ngram_size"]),
            "num_beams": 1, "max_length": cfg.n_positions, "past_present_share_buffer": shared_buffer,
        },
    }


def tokenizer_config(cfg: ModelConfig) -> dict[str, Any]:
    return {"tokenizer_class": "GPT2Tokenizer", "bos_token": EOS_TEXT, "eos_token": EOS_TEXT,
            "unk_token": EOS_TEXT, "model_max_length": cfg.n_positions, "add_prefix_space": False,
            "clean_up_tokenization_spaces": False}


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd, "n_head": cfg.n_head, "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions,
            "n_inner": cfg.n_inner, "vocab_size": cfg.vocab_size, "bos_token_id": cfg.eos_token_id,
            "eos_token_id": cfg.eos_token_id, "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "activation_function": cfg.activation, "use_cache": True}


def write_runtime_configs(out: Path, cfg: ModelConfig, io: GraphIO) -> None:
    """Every graph's genai_config (onnxruntime-genai replies as this runtime, tested): the contrib graph's KV is
    one buffer bound as past and present (genai's past_present_share_buffer), the portable graph's present
    is past + new, fed back."""
    contrib = io.kv_buffer.startswith("in place")
    files = [(TOKENIZER_CONFIG, tokenizer_config(cfg)), (HF_CONFIG, hf_config(cfg)),
             (GENAI_CONFIG, genai_config(cfg, io, shared_buffer=contrib))]
    for name, content in files:
        (out / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
