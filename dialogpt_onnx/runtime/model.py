"""The public runtime API: load a model dir, generate, stream, score, chat.

A loaded DialogModel is safe to share between threads: it holds the graph (whose onnxruntime `run` is
thread-safe), the tokenizer and the manifest, all read-only after load. Every call to generate() or
stream() owns a fresh cache, and every ChatSession owns its own, so concurrent callers never share
mutable state and each gets exactly the reply it would get alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .chat import ChatSession, Reranker
from .checks import fits_context, integer, is_integer, optional_integer
from .contrib_graph import ContribGraph
from .errors import UsageError
from .generate import generate_ids, sample_with_logprobs
from .graph import open_graph
from .manifest import (
    MODEL_FORMATS,
    OPTIMIZATION_LEVELS,
    TOKENIZER_FILE,
    Manifest,
    ModelFormat,
    Optimization,
    read_manifest,
    reexport,
)
from .memory import release_freed_memory
from .protocols import RowCache
from .results import Generation, Score
from .sampling import GREEDY, SamplingOptions, chat_options, normalized
from .scoring import batch_reply_logprobs
from .text import StopText, encode_dialogue, encode_turn, encode_turns, load_tokenizer


class DialogModel:
    def __init__(self, model_dir: str | Path, threads: int | None = None, max_length: int | None = None,
                 verify: bool = True, optimization: Optimization | None = None, model_format: ModelFormat = "onnx",
                 weight_cache: bool = True) -> None:
        optional_integer("threads", threads, 1, "all cores")
        optional_integer("max_length", max_length, 1, "the model's context")
        if optimization is not None and optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)} (onnxruntime's graph "
                             f"optimization levels), not {optimization!r}")
        self.dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.dir, verify=verify)
        if model_format not in MODEL_FORMATS:
            raise UsageError(f"model_format must be one of {', '.join(MODEL_FORMATS)}, not {model_format!r}",
                             "model_format")
        if model_format not in self.manifest.formats:
            raise UsageError(f"{self.dir} holds no model.{model_format} (its formats: "
                             f"{', '.join(self.manifest.formats)}): {reexport(self.dir, '--format', 'ort')}",
                             "model_format")
        lowest = self.manifest.lowest_optimization
        if model_format == "onnx" and optimization is not None and \
                OPTIMIZATION_LEVELS.index(optimization) < OPTIMIZATION_LEVELS.index(lowest):
            raise UsageError(f"{self.dir} needs optimization {lowest} or above (its graph stores constants that "
                             f"onnxruntime folds at load: int4's fp16 scales), not {optimization!r}", "optimization")
        # a tokenizer of its own (13-16 MB): a tokenizers object can be changed (add_tokens, padding), so models of
        # one export share only their read-only onnxruntime session
        self.tokenizer = load_tokenizer(self.dir / TOKENIZER_FILE)
        self.graph = open_graph(self.dir, self.manifest, threads=threads, max_length=max_length,
                                optimization=optimization, model_format=model_format, weight_cache=weight_cache,
                                verify=verify)
        release_freed_memory()  # the parsed model onnxruntime freed (measured: docs/footprint.md)
        self.eos = self.manifest.shape.eos_token_id

    @property
    def max_length(self) -> int:
        """Tokens of context a generation or chat may use (history + reply)."""
        return self.graph.max_length

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache memory one token of context costs (per batch row)."""
        return self.manifest.shape.kv_bytes_per_token

    # -- helpers -------------------------------------------------------------------------------
    def options(self, **kw: Any) -> SamplingOptions:
        """The generation options, checked (stop may be one string or a list of them)."""
        try:
            opts = SamplingOptions(**normalized(kw))
        except TypeError as e:
            raise UsageError(f"unknown generation option: {e}") from None
        return self.checked(opts)

    def checked(self, opts: SamplingOptions) -> SamplingOptions:
        """Typed options, checked for range and against this model's vocabulary."""
        opts.validate()
        vocab = self.manifest.shape.vocab_size
        if any(t >= vocab for t in opts.logit_bias):
            raise UsageError(f"logit_bias names token ids outside the vocabulary [0, {vocab}): "
                             f"{sorted(t for t in opts.logit_bias if t >= vocab)[:5]}", "logit_bias")
        return opts

    def stop_texts(self, opts: SamplingOptions, rows: int) -> list[StopText] | None:
        """One StopText per row when the options name stop strings."""
        return [StopText(self.tokenizer, opts.stop) for _ in range(rows)] if opts.stop else None

    def encode_turn(self, text: str) -> list[int]:
        """A DialoGPT turn: the text's tokens followed by <|endoftext|>. Special-token text typed by a
        user is plain text: only the runtime ends turns."""
        return encode_turn(self.tokenizer, text, self.eos)

    def encode_turns(self, texts: list[str]) -> list[list[int]]:
        """encode_turn for many texts, in one call that releases the GIL while it runs."""
        return encode_turns(self.tokenizer, texts, self.eos)

    def _prompt(self, item: object) -> list[int]:
        if isinstance(item, str):
            return self.encode_turn(item)
        if isinstance(item, np.ndarray):
            item = item.tolist()
        if not isinstance(item, Sequence) or isinstance(item, bytes | bytearray) or not all(map(is_integer, item)):
            raise TypeError(f"each input must be a str or a list of token ids, got {_describe(item)}")
        ids = [int(t) for t in item]
        if not ids:
            raise UsageError("input ids must be a non-empty list")
        if min(ids) < 0 or max(ids) >= self.manifest.shape.vocab_size:
            raise UsageError(f"input ids must lie in [0, {self.manifest.shape.vocab_size})")
        return ids

    def prompt_ids(self, item: str | list[int]) -> list[int]:
        """One prompt as the model reads it: text is one DialoGPT turn (its tokens + EOS); ids as given."""
        if isinstance(item, bytes | bytearray):
            raise TypeError("the prompt is bytes: decode it to str first (e.g. data.decode('utf-8'))")
        return self._prompt(item)

    def _prompts(self, inputs: object) -> tuple[list[list[int]], bool]:
        """(prompts, single): one text or id list, or a batch of them."""
        if isinstance(inputs, bytes | bytearray):
            raise TypeError("inputs is bytes: decode it to str first (e.g. data.decode('utf-8'))")
        if isinstance(inputs, np.ndarray):
            inputs = inputs.tolist()
        if isinstance(inputs, str):
            return [self.encode_turn(inputs)], True
        if not isinstance(inputs, Sequence):
            raise TypeError(f"inputs must be a str, a list of token ids, or a list of those; got {_describe(inputs)}")
        if not inputs:
            raise UsageError("inputs must not be empty")
        if all(map(is_integer, inputs)):  # numpy ints count too
            return [self._prompt(inputs)], True
        return [self._prompt(x) for x in inputs], False

    def new_row_cache(self) -> RowCache:
        """A cache with row operations (free, move, save, load), for a batching engine: the contrib graph's."""
        if not isinstance(self.graph, ContribGraph):
            raise UsageError("batching needs the contrib graph (ragged rows in one KV buffer); export without "
                             "--graph portable")
        return self.graph.new_cache()

    def check_fits(self, n_prompt: int, opts: SamplingOptions) -> None:
        fits_context(n_prompt, opts.max_new_tokens, self.max_length)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.eos], skip_special_tokens=True)

    # -- API -----------------------------------------------------------------------------------
    def generate(self, inputs: str | list[int] | list[str] | list[list[int]], num_return_sequences: int = 1,
                 **options: Any) -> Generation | list[Generation] | list[list[Generation]]:
        """Reply to one prompt (text or ids) or a batch of them. Text is encoded as one DialoGPT turn.
        num_return_sequences=N (sampling only) gives N candidates per prompt, generated as one batch: a
        list for one prompt, a list of lists for a batch. Every Generation carries its forward
        log-probability under the model (sum over its tokens, EOS included when generated).
        For MMI reranking, see runtime.mmi.MMIReranker."""
        opts = self.options(**options)
        n = integer("num_return_sequences", num_return_sequences, 1)
        if n > 1 and not opts.do_sample:
            raise UsageError("num_return_sequences > 1 needs do_sample=True (greedy gives one reply)")
        prompts, single = self._prompts(inputs)
        self.check_fits(max(map(len, prompts)), opts)
        rows = [p for p in prompts for _ in range(n)]
        stops = self.stop_texts(opts, len(rows))
        # choice i of each prompt's n samples with seed + i: the same replies as n=1 calls with those seeds,
        # whatever the other prompts of the batch (runtime.generate.row_seed)
        done = sample_with_logprobs(self.graph.new_cache(), rows, opts, self.eos, stops=stops,
                                    choices=[i for _ in prompts for i in range(n)])
        out = [Generation(self.decode(r.ids) if stops is None else stops[i].text(), r.ids, r.logprob,
                          finish_reason=r.finish_reason, token_logprobs=r.token_logprobs)
               for i, r in enumerate(done)]
        if n > 1:
            groups = [out[i: i + n] for i in range(0, len(out), n)]
            return groups[0] if single else groups
        return out[0] if single else out

    def stream(self, inputs: str | list[int], **options: Any) -> Iterator[str]:
        """Text pieces of the reply as they are produced (never a broken multi-byte character).
        Arguments are checked at the call, before the first piece is asked for."""
        opts = self.options(**options)
        prompts, single = self._prompts(inputs)
        if not single:
            raise UsageError("stream() takes one prompt: call it once per prompt, or generate() for a batch")
        self.check_fits(len(prompts[0]), opts)
        return self._stream(prompts[0], opts)

    def _stream(self, prompt: list[int], opts: SamplingOptions) -> Iterator[str]:
        stop = StopText(self.tokenizer, opts.stop)  # with no stop strings: a StreamDecoder
        for _ in generate_ids(self.graph.new_cache(), [prompt], opts, self.eos, stops=[stop]):
            piece = stop.take()
            if piece:
                yield piece
        tail = stop.flush()
        if tail:
            yield tail

    def score(self, context: str | list[str] | list[int] | list, reply: str | list[int] | list
              ) -> Score | list[Score]:
        """How likely the model finds `reply` after `context`. One pair, or a batch given as two lists.

        context: a turn (str), a dialogue (list of str, one per turn) or token ids (ending where the
        reply starts, e.g. with EOS); reply: a turn (str: its tokens + EOS) or token ids. An export with
        `--all-logits` scores a batch in one pass; the default export feeds the reply token by token."""
        if isinstance(reply, str) or (isinstance(reply, Sequence) and reply and all(map(is_integer, reply))):
            return self._score_pairs([(self._context(context), self._prompt(reply))])[0]
        if not isinstance(context, Sequence) or isinstance(context, str) or not isinstance(reply, Sequence) \
                or len(context) != len(reply) or not reply:
            raise TypeError("score() takes (context, reply) or two equally long non-empty lists of them")
        return self._score_pairs([(self._context(c), self._prompt(r)) for c, r in zip(context, reply, strict=True)])

    def _context(self, item: object) -> list[int]:
        if isinstance(item, Sequence) and item and all(isinstance(t, str) for t in item) \
                and not isinstance(item, str):
            return encode_dialogue(self.tokenizer, list(item), self.eos)
        return self._prompt(item)

    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> list[Score]:
        fits_context(max(len(c) + len(r) for c, r in pairs), 0, self.max_length)
        return [Score([float(x) for x in lp]) for lp in batch_reply_logprobs(self.graph.new_cache(), pairs)]

    def chat(self, max_history_tokens: int | None = None, reranker: Reranker | None = None,
             restore: str | Path | None = None, **options: Any) -> ChatSession:
        """A new conversation with its own history and KV cache (see ChatSession). Its replies use the chat
        defaults (runtime.CHAT_DEFAULTS) under the options given; greedy=True starts from plain greedy
        decoding instead. With a reranker (a runtime.mmi.MMIReranker over this model), every reply is the
        best of N sampled candidates. restore=PATH goes on with a chat saved by ChatSession.save (its turns,
        options and KV cache; options given here override its own), replying as the uninterrupted chat would."""
        if reranker is not None and reranker.forward is not self:
            raise UsageError("the reranker's forward model is another model: call reranker.chat(), or build the "
                             "reranker over this model")
        if restore is None:
            return ChatSession(self, self.options(**chat_options(**options)), max_history_tokens, reranker)
        from .saved_chat import read

        if options.pop("greedy", False):
            options = {**GREEDY, **options}
        saved = read(restore, self.manifest)
        chat = ChatSession(self, self.options(**{**saved.options, **options}),
                           saved.max_history_tokens if max_history_tokens is None else max_history_tokens, reranker)
        chat._restore(saved)
        return chat


def _describe(x: object) -> str:
    return "None" if x is None else f"{type(x).__name__} {x!r}"[:80]


def load(model_dir: str | Path, threads: int | None = None, max_length: int | None = None,
         verify: bool = True, optimization: Optimization | None = None, model_format: ModelFormat = "onnx",
         weight_cache: bool = True) -> DialogModel:
    """Open an exported model dir. Checks the manifest and every file's size; verify=True (the default)
    also checks every file's sha256 (~1 s per GB: pass verify=False for a dir you trust and load often).
    `optimization` overrides onnxruntime's graph optimization level ("off", "basic", "extended", "all";
    default: the manifest's, which the export was verified with); every level gives the same tokens.
    model_format="ort" loads model.ort (an export made with --format ort: the format of onnxruntime's mobile
    and minimal builds), token for token the same as model.onnx. weight_cache=True (the default) builds the
    session from this machine's pre-packed copy of the weights, written by the first load and memory-mapped
    by the later ones (runtime.weight_cache; $DIALOGPT_ONNX_CACHE=off turns it off everywhere)."""
    return DialogModel(model_dir, threads=threads, max_length=max_length, verify=verify, optimization=optimization,
                       model_format=model_format, weight_cache=weight_cache)


__all__ = ["DialogModel", "Generation", "Score", "load"]
