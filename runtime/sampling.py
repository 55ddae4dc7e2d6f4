"""Logits processing and token choice in pure numpy, in transformers' order:
repetition penalty → no-repeat-ngram → temperature → top-k → top-p → draw (greedy: argmax)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import integer, is_integer, is_number, number
from .errors import UsageError

# Below this, logits / temperature overflows float32 for ordinary logits (|logit| ~ 30): sampling at
# such a temperature is greedy decoding, which do_sample=False does exactly.
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False  # greedy by default, as the DialoGPT model card's chat loop
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def validate(self) -> None:
        """Every option checked for type and range; the error names the argument and what is allowed."""
        integer("max_new_tokens", self.max_new_tokens, 0)
        integer("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise UsageError(f"min_new_tokens must be <= max_new_tokens ({self.max_new_tokens}), got "
                             f"{self.min_new_tokens!r}", "min_new_tokens")
        if not isinstance(self.do_sample, bool | np.bool_):
            raise UsageError(f"do_sample must be True or False, got {self.do_sample!r}", "do_sample")
        number("top_p", self.top_p, "a number in (0, 1]", is_number(self.top_p) and 0.0 < self.top_p <= 1.0)
        integer("top_k", self.top_k, 0, note="0 turns it off")
        t = self.temperature
        number("temperature", t, f"a number >= {MIN_TEMPERATURE} when sampling (do_sample=False for greedy)",
               not self.do_sample or (is_number(t) and t >= MIN_TEMPERATURE))
        number("repetition_penalty", self.repetition_penalty, "a number > 0 (1.0 turns it off)",
               is_number(self.repetition_penalty) and self.repetition_penalty > 0)
        integer("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, note="0 turns it off")
        if self.seed is not None and (not is_integer(self.seed) or not 0 <= self.seed < 2**63):
            raise UsageError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}", "seed")


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """In place, as transformers: divide positive logits of seen tokens by penalty, multiply negative."""
    if penalty == 1.0 or seen.size == 0:
        return
    ids = np.unique(seen)
    vals = logits[ids]
    logits[ids] = np.where(vals < 0, vals * penalty, vals / penalty)


def banned_ngram_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `tokens`."""
    if n <= 0 or len(tokens) + 1 < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix]


def top_k_filter(logits: np.ndarray, k: int) -> None:
    if 0 < k < logits.shape[-1]:
        kth = np.partition(logits, -k)[-k]
        logits[logits < kth] = -np.inf


def top_p_filter(logits: np.ndarray, p: float) -> None:
    """Keep the smallest set of top tokens whose probability reaches p (always at least one)."""
    if p >= 1.0:
        return
    order = np.argsort(logits, kind="stable")  # ascending, as transformers' TopPLogitsWarper
    probs = _softmax(logits[order])
    cum = np.cumsum(probs)
    remove = cum <= (1.0 - p)
    remove[-1] = False
    logits[order[remove]] = -np.inf


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def process(logits: np.ndarray, history: list[int], generated: int, opts: SamplingOptions,
            eos: int) -> np.ndarray:
    """A processed float32 copy of one row's logits (float32 as transformers' processors; a float64 copy
    costs ~0.1 ms a token)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if generated < opts.min_new_tokens:
        out[eos] = -np.inf
    apply_repetition_penalty(out, np.asarray(history, dtype=np.int64), opts.repetition_penalty)
    if opts.no_repeat_ngram_size:
        out[banned_ngram_tokens(history, opts.no_repeat_ngram_size)] = -np.inf
    if opts.do_sample:
        if opts.temperature != 1.0:
            out /= opts.temperature
        top_k_filter(out, opts.top_k)
        top_p_filter(out, opts.top_p)
    return out


def choose(processed: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> int:
    if not opts.do_sample:
        return int(np.argmax(processed))
    probs = _softmax(processed.astype(np.float64))  # float64: rng.choice wants probabilities summing to 1
    return int(rng.choice(probs.shape[-1], p=probs))
