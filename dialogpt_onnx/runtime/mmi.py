"""Maximum mutual information reranking, the DialoGPT paper's answer to bland replies.

The forward model samples N candidate replies (one batch); a backward model, trained on dialogues read
last turn first (`dialogpt-onnx train --reverse`), scores how well each candidate predicts the source:
log p(source | candidate). Generic replies ("I don't know") fit any source, so they score low. The
source is the most recent `source_turns` turns of the history, read newest first, as the backward
model was trained. score = backward + forward_weight * forward, each a per-token mean (or a sum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from .chat import ChatSession
from .checks import integer, number
from .errors import UsageError
from .model import DialogModel, load
from .results import Generation, Score
from .sampling import SamplingOptions


@dataclass(frozen=True)
class MMIOptions:
    candidates: int = 8
    forward_weight: float = 0.0  # λ: 0 ranks by the backward model alone, as the paper's reranker
    reduce: Literal["mean", "sum"] = "mean"  # "mean" (per token: no bias to short sources/replies) | "sum"
    source_turns: int = 1  # history turns, newest first, that the backward model scores

    def validate(self) -> None:
        integer("candidates", self.candidates, 1)
        integer("source_turns", self.source_turns, 1)
        if self.reduce not in ("mean", "sum"):
            raise UsageError(f"reduce must be 'mean' or 'sum', got {self.reduce!r}", "reduce")
        number("forward_weight", self.forward_weight)


@dataclass(frozen=True)
class Candidate:
    generation: Generation  # text, ids and forward log-probability (sum)
    backward: Score  # log p(source | candidate) per source token
    score: float  # what the ranking used


@dataclass(frozen=True)
class Reranked:
    best: Generation
    candidates: list[Candidate]  # best first


def check_compatible(forward: DialogModel, backward: DialogModel) -> None:
    """The backward model must read the forward model's tokens: same vocabulary, EOS and tokenizer."""
    f, b = forward.manifest.shape, backward.manifest.shape
    if f.vocab_size != b.vocab_size or f.eos_token_id != b.eos_token_id:
        raise UsageError(f"backward model {backward.dir} has vocabulary {b.vocab_size} / EOS {b.eos_token_id}, the "
                         f"forward model {f.vocab_size} / {f.eos_token_id}: give a backward model trained with the "
                         "same tokenizer")
    if forward.tokenizer.to_str() != backward.tokenizer.to_str():
        raise UsageError(f"backward model {backward.dir} has another tokenizer than the forward model: give a "
                         "backward model trained with the same tokenizer")


def source_turns(ids: list[int], eos: int, n: int) -> list[int]:
    """The last n turns of a history (each ending with EOS), newest first, as one token list."""
    turns: list[list[int]] = []
    current: list[int] = []
    for t in ids:
        current.append(t)
        if t == eos:
            turns.append(current)
            current = []
    if current:  # a history whose last turn lacks its EOS
        turns.append([*current, eos])
    return [t for turn in reversed(turns[-n:]) for t in turn]


class MMIReranker:
    """The forward and backward model pair, loaded once; safe to share between threads (both models are).
    generate() and chat() give the best of `options.candidates` sampled replies."""

    def __init__(self, forward: DialogModel, backward: DialogModel, options: MMIOptions | None = None) -> None:
        check_compatible(forward, backward)
        self.forward, self.backward = forward, backward
        self.options = options or MMIOptions()
        self.options.validate()

    @classmethod
    def load(cls, forward_dir: str | Path, backward_dir: str | Path, options: MMIOptions | None = None,
             threads: int | None = None, max_length: int | None = None, verify: bool = True) -> MMIReranker:
        """Open both exported model dirs (the backward one from `dialogpt-onnx train --reverse`)."""
        forward = load(forward_dir, threads=threads, max_length=max_length, verify=verify)
        return cls(forward, load(backward_dir, threads=threads, verify=verify), options)

    @property
    def candidates(self) -> int:
        """Sampled replies per turn."""
        return self.options.candidates

    def _reduce(self, total: float, n: int) -> float:
        return total / n if self.options.reduce == "mean" else total

    def rerank(self, prompt: list[int], generations: list[Generation]) -> Reranked:
        """Score candidates for one prompt (token ids ending where the reply starts) and sort them."""
        if not generations:
            raise UsageError("no candidates to rerank")
        eos = self.forward.eos
        source = source_turns(prompt, eos, self.options.source_turns)
        replies = [g.ids if g.ids[-1:] == [eos] else [*g.ids, eos] for g in generations]
        scores = self.backward.score(replies, [source] * len(replies))
        scores = scores if isinstance(scores, list) else [scores]
        ranked = []
        for g, s in zip(generations, scores, strict=True):
            fwd = self._reduce(g.logprob or 0.0, max(len(g.ids), 1))
            ranked.append(Candidate(g, s, self._reduce(s.sum_logprob, len(s.token_logprobs))
                                    + self.options.forward_weight * fwd))
        ranked.sort(key=lambda c: c.score, reverse=True)
        return Reranked(ranked[0].generation, ranked)

    def reply(self, prompt: str | list[int], **sampling: Any) -> Reranked:
        """Sample `candidates` replies (see sampling()) and return them reranked."""
        return self.reply_ids(self.forward.prompt_ids(prompt), self.forward.options(**sampling))

    def generate(self, prompt: str | list[int], **sampling: Any) -> Generation:
        """The best reply to one prompt, with every candidate's scores in `.candidates` (best first)."""
        out = self.reply(prompt, **sampling)
        return replace(out.best, candidates=out.candidates)

    def chat(self, max_history_tokens: int | None = None, **options: Any) -> ChatSession:
        """A conversation on the forward model whose every reply is the best of `candidates`."""
        return self.forward.chat(max_history_tokens, reranker=self, **options)

    @staticmethod
    def sampling(opts: SamplingOptions) -> SamplingOptions:
        """Candidates are always sampled: the given options (a chat's, the CLI's), with top-k 50 when
        they set no top-k."""
        return replace(opts, do_sample=True, top_k=opts.top_k or 50)

    def reply_ids(self, prompt: list[int], opts: SamplingOptions) -> Reranked:
        """reply() for token ids and checked options."""
        cands = self.forward.generate(prompt, num_return_sequences=self.options.candidates,
                                      **asdict(self.sampling(opts)))
        # one prompt: a list of Generations (N > 1) or one Generation (N = 1)
        return self.rerank(prompt, cast("list[Generation]", cands if isinstance(cands, list) else [cands]))
