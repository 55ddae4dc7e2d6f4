"""The data the project ships (`data/` at the repository root, licenses beside it), named in one place.

Readers here return dialogues as lists of turn texts; turning them into DialoGPT token sequences
(every turn followed by <|endoftext|>) is runtime.text.encode_dialogue's job.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DIALOGPT_CONFIGS = DATA_DIR / "dialogpt-configs"  # {small,medium,large}/config.json, as the original repo
DIALOGPT_TOKENIZER = DATA_DIR / "dialogpt-tokenizer"  # vocab.json + merges.txt
TOPICAL_CHAT = DATA_DIR / "topical-chat"  # valid_freq / valid_rare (training), test_freq (evaluation)


def tokenizer_files() -> dict[str, Path]:
    return {"vocab.json": DIALOGPT_TOKENIZER / "vocab.json", "merges.txt": DIALOGPT_TOKENIZER / "merges.txt"}


def dialogpt_config(size: str) -> dict:
    """The original DialoGPT config of `size` (small, medium, large): no model_type key."""
    return json.loads((DIALOGPT_CONFIGS / size / "config.json").read_text())


def topical_chat(split: str, limit: int | None = None) -> list[list[str]]:
    """Conversations of a Topical-Chat split (`test_freq`, `valid_freq`, `valid_rare`) as turn texts."""
    data = json.loads((TOPICAL_CHAT / f"{split}.json").read_text(encoding="utf-8"))
    convs = [[m["message"].strip() for m in c["content"] if m["message"].strip()] for c in data.values()]
    return convs[:limit] if limit is not None else convs
