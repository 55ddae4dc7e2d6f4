"""Logits processing and token choice in pure numpy, in transformers' order:
logit bias → repetition penalty → presence / frequency penalty → no-repeat-ngram → temperature → top-k →
top-p → draw (greedy: argmax). Presence and frequency penalties are OpenAI's (transformers has none)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    # OpenAI's: logits[t] -= frequency_penalty * (times t was generated) + presence_penalty * (t generated at all)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit
    stop: tuple[str, ...] = ()  # the reply ends before the first of these texts (see runtime.text.StopText)
    top_logprobs: int | None = None  # None: no per-token log-probabilities; k: the token's and the top k others'

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
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            number(name, v, "a number in [-2, 2] (0 turns it off)", is_number(v) and -2.0 <= v <= 2.0)
        bias = self.logit_bias
        if not isinstance(bias, Mapping) or not all(is_integer(k) and k >= 0 and is_number(v) and -100 <= v <= 100
                                                    for k, v in bias.items()):
            raise UsageError("logit_bias must map token ids (integers >= 0) to numbers in [-100, 100], got "
                             f"{_short(bias)}", "logit_bias")
        stop = self.stop
        if not isinstance(stop, tuple) or not all(isinstance(x, str) and x for x in stop):
            raise UsageError(f"stop must be a list of non-empty strings, got {_short(stop)}", "stop")
        k = self.top_logprobs
        if k is not None and (not is_integer(k) or not 0 <= k <= MAX_TOP_LOGPROBS):
            raise UsageError(f"top_logprobs must be None (off) or an integer in [0, {MAX_TOP_LOGPROBS}], got "
                             f"{_short(k)}", "top_logprobs")

    @property
    def penalized(self) -> bool:
        """Whether any option changes the logits (greedy without them is a plain argmax)."""
        return bool(self.repetition_penalty != 1.0 or self.no_repeat_ngram_size or self.min_new_tokens
                    or self.presence_penalty or self.frequency_penalty or self.logit_bias)


MAX_TOP_LOGPROBS = 20  # OpenAI's bound

# What a chat reply uses when the caller names no decoding option: DialogModel.chat, the CLI's chat and
# generate, the server with the fields omitted (and so its page). Chosen with `python -m benchmarks.studies.defaults`
# on the bundled model (benchmarks/results/defaults/report.md): the rule and the figures are there.
CHAT_DEFAULTS: dict[str, Any] = {"do_sample": True, "top_k": 50, "no_repeat_ngram_size": 3}
# Plain greedy decoding (the DialoGPT model card's chat loop; what parity with transformers is checked on).
GREEDY: dict[str, Any] = {"do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def chat_options(**given: Any) -> dict[str, Any]:
    """The chat defaults with the options a caller gave over them (greedy=True: GREEDY instead)."""
    base = GREEDY if given.pop("greedy", False) else CHAT_DEFAULTS
    return {**base, **given}


def _short(x: object) -> str:
    return repr(x)[:80]


def normalized(kw: dict) -> dict:
    """Options as callers write them (one stop string, a list of them) in the form SamplingOptions keeps."""
    stop = kw.get("stop")
    if isinstance(stop, str):
        kw = {**kw, "stop": (stop,)}
    elif isinstance(stop, list):
        kw = {**kw, "stop": tuple(stop)}
    elif stop is None and "stop" in kw:
        kw = {**kw, "stop": ()}
    if kw.get("logit_bias") is None and "logit_bias" in kw:
        kw = {**kw, "logit_bias": {}}
    return kw


def apply_logit_bias(logits: np.ndarray, bias: Mapping[int, float]) -> None:
    """In place, as transformers' SequenceBiasLogitsProcessor with one-token sequences."""
    for t, b in bias.items():
        logits[t] += b


def apply_presence_frequency(logits: np.ndarray, generated: list[int], presence: float, frequency: float) -> None:
    """In place, as OpenAI defines them: over the tokens generated so far (not the prompt)."""
    if not generated:
        return
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    logits[ids] -= (frequency * counts + presence).astype(np.float32)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """In place, as transformers: divide positive logits of seen tokens by penalty, multiply negative."""
    if penalty == 1.0 or seen.size == 0:
        return
    ids = np.unique(seen)
    vals = logits[ids]
    with np.errstate(over="ignore", divide="ignore"):  # a penalty near 0: +-inf, which _softmax handles
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
    """Probabilities of logits, defined for every input the options allow: +inf logits (a repetition
    penalty near 0 divides a logit into infinity) share all the mass, NaN counts as banned, and if every
    token is banned they are uniform (never NaN: a NaN would end the request in rng.choice)."""
    top = np.max(x)  # NaN if any is NaN: a finite max means the common case, one exp over the row
    if not np.isfinite(top):
        x = np.where(np.isnan(x), -np.inf, x)
        top = np.max(x)
        if not np.isfinite(top):
            e = (x == top).astype(x.dtype) if top > 0 else np.ones_like(x)
            return e / e.sum()
    e = np.exp(x - top)
    return e / e.sum()


def process(logits: np.ndarray, history: list[int], generated: int, opts: SamplingOptions,
            eos: int) -> np.ndarray:
    """A processed float32 copy of one row's logits (float32 as transformers' processors; a float64 copy
    costs ~0.1 ms a token)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if generated < opts.min_new_tokens:
        out[eos] = -np.inf
    if opts.logit_bias:
        apply_logit_bias(out, opts.logit_bias)
    apply_repetition_penalty(out, np.asarray(history, dtype=np.int64), opts.repetition_penalty)
    if generated and (opts.presence_penalty or opts.frequency_penalty):  # history ends with the tokens generated
        apply_presence_frequency(out, history[len(history) - generated:], opts.presence_penalty,
                                 opts.frequency_penalty)
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
