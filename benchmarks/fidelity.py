"""What a variant's replies lose against fp32, measured on held-out dialogue.

- reply perplexity: the runtime's own log-probabilities of the real next turn (runtime/scoring.py);
- greedy agreement with PyTorch fp32: N new tokens with EOS banned, so every reply has N comparable
  tokens; "token agreement" = share of tokens before the first divergence (the export parity's greedy
  agreement), "identical" = share of replies equal token for token;
- batch invariance: a ragged batch of 8 gives each prompt the reply it gets alone;
- cache invariance: a chat that keeps its KV cache gives, turn after turn, the reply the same history
  gets recomputed from scratch;
- distinct-1/2 and mean length of replies under greedy, top-k and top-p sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dialogpt_onnx.runtime.scoring import reply_logprobs


def prefix_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def reply_perplexity(model, pairs: list[tuple[list[int], list[int]]]) -> float:
    cache = model.graph.new_cache()
    nll = count = 0.0
    for context, reply in pairs:
        lp = reply_logprobs(cache, context, reply)
        nll -= float(lp.sum())
        count += len(reply)
    return math.exp(nll / count)


def teacher_forced_logits(cache, context: list[int], reply: list[int]) -> np.ndarray:  # noqa: ANN001
    """The logits [len(reply), vocab] predicting each reply token, one step per token as a chat computes
    them (`cache`: a runtime.graph.Cache, reset first)."""
    cache.reset(1, reserve=len(context) + len(reply))
    rows = [cache.prefill([context])[0].copy()]  # copies: the graph reuses its output buffer
    for t in reply[:-1]:
        rows.append(cache.step(np.array([t]))[0].copy())
    return np.stack(rows)


def greedy_replies(model, prompts: list[list[int]], n: int, batch: int = 1) -> list[list[int]]:
    """n greedy tokens per prompt (EOS banned), `batch` prompts at a time (ragged rows)."""
    out: list[list[int]] = []
    for b in range(0, len(prompts), batch):
        gens = model.generate(prompts[b: b + batch], max_new_tokens=n, min_new_tokens=n)
        out += [g.ids for g in gens]
    return out


def torch_greedy_replies(ref, prompts: list[list[int]], n: int, eos: int) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for p in prompts:
            gen = ref.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=eos, attention_mask=torch.ones(1, len(p), dtype=torch.long))
            out.append(gen[0, len(p):].tolist())
    return out


def agreement(replies: list[list[int]], reference: list[list[int]]) -> dict[str, float]:
    return {"token_agreement": float(np.mean([prefix_agreement(a, r) for a, r in zip(replies, reference,
                                                                                      strict=True)])),
            "identical_replies": float(np.mean([a == r for a, r in zip(replies, reference, strict=True)]))}


def cache_invariance(model, chats: list[list[str]], max_new_tokens: int = 24) -> dict[str, float]:
    """Each chat's user turns through one ChatSession (cache kept) vs the same history recomputed by a
    fresh generate() every turn. Greedy; returns the share of turns and of whole chats that agree."""
    turns_same = turns = chats_same = 0
    for users in chats:
        # a budget as large as the context: no turn is dropped, so the cache is kept across every turn
        session = model.chat(max_history_tokens=model.max_length, max_new_tokens=max_new_tokens, greedy=True)
        history: list[int] = []
        same = True
        for text in users:
            kept = session.send(text)
            history += model.encode_turn(text)
            fresh = model.generate(history, max_new_tokens=max_new_tokens)
            history += fresh.ids if fresh.ids[-1:] == [model.eos] else fresh.ids + [model.eos]
            turns += 1
            turns_same += kept == fresh.text
            same &= kept == fresh.text
            if kept != fresh.text:  # the histories differ from here on: the rest would not compare
                break
        chats_same += same
    return {"turns_equal": turns_same / max(turns, 1), "chats_equal": chats_same / max(len(chats), 1)}


def distinct(replies: list[list[int]], n: int) -> float:
    grams = [tuple(r[i: i + n]) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def diversity(model, prompts: list[list[int]], max_new_tokens: int = 32, seed: int = 0) -> dict[str, dict]:
    modes = {"greedy": {}, "top_k": {"do_sample": True, "top_k": 50}, "top_p": {"do_sample": True, "top_p": 0.9}}
    out = {}
    for name, kw in modes.items():
        replies = []
        for i, p in enumerate(prompts):
            extra = {"seed": seed + i} if kw else {}
            ids = model.generate(p, max_new_tokens=max_new_tokens, **kw, **extra).ids
            replies.append([t for t in ids if t != model.eos])
        out[name] = {"distinct_1": distinct(replies, 1), "distinct_2": distinct(replies, 2),
                     "mean_length": float(np.mean([len(r) for r in replies]))}
    return out
