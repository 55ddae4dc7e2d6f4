"""Tokenizer wrapper and UTF-8-clean incremental detokenization."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelDirError, UsageError
from .manifest import reexport

# <|endoftext|> in GPT-2's vocabulary: DialoGPT ends every turn with it. Checkpoints name their own in
# config.json (and the manifest carries it); this is the default when they do not.
EOS_TOKEN_ID = 50256


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001
        raise ModelDirError(f"{path} is not a readable tokenizer.json: {reexport(path.parent)}") from None
    tok.encode_special_tokens = True  # "<|endoftext|>" typed by a user is plain text, not a turn boundary
    return tok


def _checked(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise UsageError("text must be a non-empty string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: what Python makes of invalid UTF-8 bytes on argv/stdin
        raise UsageError("text is not valid UTF-8: fix the input's encoding") from None
    return text


def encode_turn(tok: Tokenizer, text: str, eos: int) -> list[int]:
    """One DialoGPT turn: the text's tokens followed by <|endoftext|>."""
    return tok.encode(_checked(text), add_special_tokens=False).ids + [eos]


def encode_turns(tok: Tokenizer, texts: list[str], eos: int) -> list[list[int]]:
    """encode_turn for many texts in one call that releases the GIL (tokenizers' encode does not: a
    server thread encoding a long history would stall every other thread for as long)."""
    return [e.ids + [eos] for e in tok.encode_batch([_checked(t) for t in texts], add_special_tokens=False)]


def encode_dialogue(tok: Tokenizer, turns: list[str], eos: int) -> list[int]:
    """A dialogue as DialoGPT reads it: every turn followed by <|endoftext|>, all in one sequence."""
    return [t for turn in encode_turns(tok, turns, eos) for t in turn]


class StreamDecoder:
    """Turns a growing list of token ids into text pieces, never splitting a multi-byte character:
    byte-level BPE tokens may end mid-character, which decode() shows as U+FFFD until completed.

    Incremental: each push decodes only the ids since the last piece that ended on a whole character
    (a window of a token or a few), not the whole reply, so a reply of n tokens costs O(n), not O(n^2).
    Byte-level BPE decodes a concatenation as the concatenation of its parts cut at character
    boundaries, so the pieces join into decode(ids) (tested on random ids)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self._start = 0  # ids before this index have been handed out as whole characters

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids[self._start:], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        self._start = len(self.ids)
        return text

    def flush(self) -> str:
        text = self.tok.decode(self.ids[self._start:], skip_special_tokens=True)
        self._start = len(self.ids)
        return text


class StopText:
    """A reply's text as it is made, ended before the first stop string. push() gives the text that is
    safe to show (a tail that may be the start of a stop string is held back until it is not); take()
    gives what push() gave since the last take (for a consumer that did not push); `matched` is the stop
    string that ended the reply. The same cut for a streamed and a whole reply; no stop strings: the
    text is StreamDecoder's."""

    def __init__(self, tok: Tokenizer, stops: tuple[str, ...]) -> None:
        self.decoder = StreamDecoder(tok)
        self.stops = stops
        self.held = ""
        self.matched: str | None = None
        self.parts: list[str] = []  # all text given out
        self._taken = 0

    def push(self, token: int) -> str:
        if self.matched is not None:
            return ""
        return self._give(self._cut(self.held + self.decoder.push(token)))

    def take(self) -> str:
        out = "".join(self.parts[self._taken:])
        self._taken = len(self.parts)
        return out

    def flush(self) -> str:
        """What is left when the reply is over (the held tail, if no stop string came)."""
        if self.matched is not None:
            return ""
        text = self._cut(self.held + self.decoder.flush())
        if self.matched is None:
            text, self.held = text + self.held, ""
        return self._give(text)

    def text(self) -> str:
        """The whole reply's text (after flush)."""
        self.flush()
        return "".join(self.parts)

    def _give(self, text: str) -> str:
        if text:
            self.parts.append(text)
        return text

    def _cut(self, text: str) -> str:
        # A stop string can only start in the held tail or the new text: any earlier start would have been held.
        hits = [(i, s) for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            i, self.matched = min(hits)
            self.held = ""
            return text[:i]
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:]
        return text[: len(text) - keep]


def _gpt2_byte_table() -> dict[str, int]:
    """GPT-2's byte-level BPE spells each byte as one printable character: that table, reversed (the
    tokenizers library applies it inside its decoder but does not expose it)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _gpt2_byte_table()


def token_bytes(tok: Tokenizer, token: int) -> bytes:
    """The bytes a token spells (part of a character, for some): OpenAI's logprobs `bytes`, the CLI's text."""
    return bytes(_BYTES[c] for c in (tok.id_to_token(token) or ""))
