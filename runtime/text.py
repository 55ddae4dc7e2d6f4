"""Tokenizer wrapper and UTF-8-clean incremental detokenization."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelDirError


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001
        raise ModelDirError(f"{path} is not a readable tokenizer.json: re-export the model") from None


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, never splitting a multi-byte character:
    byte-level BPE tokens may end mid-character, which decode() shows as U+FFFD until completed."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece
