"""Tokenizer wrapper and UTF-8-clean incremental detokenization."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelDirError, UsageError

# <|endoftext|> in GPT-2's vocabulary: DialoGPT ends every turn with it. Checkpoints name their own in
# config.json (and the manifest carries it); this is the default when they do not.
EOS_TOKEN_ID = 50256


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001
        raise ModelDirError(f"{path} is not a readable tokenizer.json: re-export the model") from None
    tok.encode_special_tokens = True  # "<|endoftext|>" typed by a user is plain text, not a turn boundary
    return tok


def encode_turn(tok: Tokenizer, text: str, eos: int) -> list[int]:
    """One DialoGPT turn: the text's tokens followed by <|endoftext|>."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise UsageError("text must be a non-empty string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: what Python makes of invalid UTF-8 bytes on argv/stdin
        raise UsageError("text is not valid UTF-8: fix the input's encoding") from None
    return tok.encode(text, add_special_tokens=False).ids + [eos]


def encode_dialogue(tok: Tokenizer, turns: list[str], eos: int) -> list[int]:
    """A dialogue as DialoGPT reads it: every turn followed by <|endoftext|>, all in one sequence."""
    return [t for turn in turns for t in encode_turn(tok, turn, eos)]


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
