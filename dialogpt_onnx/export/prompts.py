"""Dialogue prompts for parity checks: built-in samples, a text file, or Topical-Chat JSON."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ExportError

# Multi-turn contexts in DialoGPT's format (each turn is later followed by <|endoftext|>).
SAMPLE_DIALOGUES: list[list[str]] = [
    ["Hello, how are you today?"],
    ["Does money buy happiness?", "Depends how much money you spend on it."],
    ["I just finished reading a book about the ocean.", "Oh nice, which one?",
     "It was about deep sea creatures. Did you know some fish make their own light?"],
    ["What's your favorite movie?", "I love the Lord of the Rings trilogy.", "Why that one?"],
]


def load_prompts(path: str | Path | None, limit: int = 4, turns: int = 3) -> list[list[str]]:
    """Dialogues as lists of turns. `.json`: Topical-Chat format (first `turns` messages of each
    conversation); any other file: one dialogue per line, turns separated by tabs."""
    if path is None:
        return SAMPLE_DIALOGUES[:limit]
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"prompts file {p} does not exist: give a .txt (one dialogue per line) or Topical-Chat .json")
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            dialogues = [[m["message"] for m in conv["content"][:turns]] for conv in data.values()]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ExportError(f"{p} is not Topical-Chat JSON ({{id: {{content: [{{message}}]}}}}): "
                              "fix it or give a .txt file") from None
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ExportError(f"{p} is not UTF-8 text: give a .txt of tab-separated turns or a Topical-Chat "
                              ".json") from None
        dialogues = [[t.strip() for t in line.split("\t") if t.strip()] for line in text.splitlines()]
    dialogues = [d for d in dialogues if d][:limit]
    if not dialogues:
        raise ExportError(f"{p} holds no dialogue: add at least one non-empty line")
    return dialogues
