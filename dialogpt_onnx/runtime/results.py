"""What the runtime returns: plain values, imported by the model, chat and MMI alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# "stop": the model ended its turn (EOS) or a stop string came; "length": max_new_tokens was reached
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's natural-log probability under the model's raw logits, and the `top_logprobs`
    most likely tokens' at that step (best first)."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class Generation:
    text: str
    ids: list[int]
    logprob: float | None = None  # log p(ids | prompt) under the model's raw logits
    candidates: list[Any] | None = None  # MMI: every candidate (runtime.mmi.Candidate), best first
    finish_reason: FinishReason | None = None
    token_logprobs: list[TokenLogprob] | None = None  # with top_logprobs set: one per token in ids


@dataclass(frozen=True)
class Score:
    """log p(reply | context) under the model: natural-log probabilities of the reply's tokens (its
    closing <|endoftext|> included when the reply was given as text)."""
    token_logprobs: list[float]

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / len(self.token_logprobs)
