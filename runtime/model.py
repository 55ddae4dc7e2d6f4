"""The public runtime API: load a model dir, generate, stream, chat."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .generate import generate_ids
from .manifest import TOKENIZER_FILE, Manifest, read_manifest
from .sampling import SamplingOptions
from .session import open_session
from .text import StreamDecoder, load_tokenizer

if TYPE_CHECKING:
    from .chat import ChatSession


@dataclass(frozen=True)
class Generation:
    text: str
    ids: list[int]


class DialogModel:
    def __init__(self, model_dir: str | Path, threads: int | None = None, max_length: int | None = None,
                 verify_files: bool = True) -> None:
        self.dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.dir, check_files=verify_files)
        self.tokenizer = load_tokenizer(self.dir / TOKENIZER_FILE)
        self.decoder = open_session(self.dir, self.manifest, threads=threads, max_length=max_length)
        self.decoder.check_io()
        self.eos = self.manifest.eos_token_id

    # -- helpers -------------------------------------------------------------------------------
    def options(self, **kw: Any) -> SamplingOptions:
        try:
            opts = SamplingOptions(**kw)
        except TypeError as e:
            raise ValueError(f"unknown generation option: {e}") from None
        opts.validate()
        return opts

    def encode_turn(self, text: str) -> list[int]:
        """A DialoGPT turn: the text's tokens followed by <|endoftext|>."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text must be a non-empty string")
        return self.tokenizer.encode(text, add_special_tokens=False).ids + [self.eos]

    def _prompt(self, item: str | list[int]) -> list[int]:
        if isinstance(item, str):
            return self.encode_turn(item)
        ids = [int(t) for t in item]
        if not ids:
            raise ValueError("input ids must be a non-empty list")
        if min(ids) < 0 or max(ids) >= self.manifest.vocab_size:
            raise ValueError(f"input ids must lie in [0, {self.manifest.vocab_size})")
        return ids

    def _check_fits(self, n_prompt: int, opts: SamplingOptions) -> None:
        limit = self.decoder.max_length
        if n_prompt + opts.max_new_tokens > limit:
            raise ValueError(f"input of {n_prompt} tokens + max_new_tokens {opts.max_new_tokens} exceeds the "
                             f"context of {limit}: shorten the input or lower max_new_tokens")

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.eos], skip_special_tokens=True)

    # -- API -----------------------------------------------------------------------------------
    def generate(self, inputs: str | list[int] | list[str] | list[list[int]], **options: Any
                 ) -> Generation | list[Generation]:
        """Reply to one prompt (text or ids) or a batch of them. Text is encoded as one DialoGPT turn."""
        opts = self.options(**options)
        seq = list(inputs) if not isinstance(inputs, str) else None
        single = seq is None or (bool(seq) and isinstance(seq[0], numbers.Integral))  # numpy ints count too
        items = [inputs] if single else seq
        if not items:
            raise ValueError("inputs must not be empty")
        prompts = [self._prompt(x) for x in items]
        self._check_fits(max(map(len, prompts)), opts)
        replies: list[list[int]] = [[] for _ in prompts]
        self.decoder.owner = None
        for step_ids in generate_ids(self.decoder, prompts, opts, self.eos):
            for b, t in enumerate(step_ids):
                if t >= 0:
                    replies[b].append(int(t))
        out = [Generation(self.decode(r), r) for r in replies]
        return out[0] if single else out

    def stream(self, inputs: str | list[int], **options: Any) -> Iterator[str]:
        """Text pieces of the reply as they are produced (never a broken multi-byte character)."""
        opts = self.options(**options)
        prompt = self._prompt(inputs)
        self._check_fits(len(prompt), opts)
        sd = StreamDecoder(self.tokenizer)
        self.decoder.owner = None
        for step_ids in generate_ids(self.decoder, [prompt], opts, self.eos):
            if step_ids[0] >= 0 and step_ids[0] != self.eos:
                piece = sd.push(int(step_ids[0]))
                if piece:
                    yield piece
        tail = sd.flush()
        if tail:
            yield tail

    def chat(self, max_history_tokens: int | None = None, **options: Any) -> ChatSession:
        from .chat import ChatSession

        return ChatSession(self, self.options(**options), max_history_tokens)


def load(model_dir: str | Path, threads: int | None = None, max_length: int | None = None) -> DialogModel:
    """Open an exported model dir (checks the manifest and every file's sha256)."""
    return DialogModel(model_dir, threads=threads, max_length=max_length)


__all__ = ["DialogModel", "Generation", "load"]
