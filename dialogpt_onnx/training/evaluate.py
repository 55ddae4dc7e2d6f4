"""Reply perplexity on held-out dialogue, the number the bundled model is chosen by.

For every turn t >= 1 of a conversation: context = the earlier turns (each + EOS) cut to their last
`context_tokens` tokens, target = turn t + EOS. Perplexity = exp(total target NLL / target tokens).
This is what chat asks of the model: the next turn given the history it keeps (128 tokens by default).
"""

from __future__ import annotations

import math

import numpy as np

from dialogpt_onnx.runtime.text import encode_turn


def reply_pairs(tok, convs: list[list[str]], eos: int, context_tokens: int = 128) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for conv in convs:
        turns = [encode_turn(tok, t, eos) for t in conv]
        for t in range(1, len(turns)):
            ctx = [x for turn in turns[:t] for x in turn][-context_tokens:]
            pairs.append((ctx, turns[t]))
    return pairs


def reply_nll(model, pairs: list[tuple[list[int], list[int]]], batch: int = 16, progress: bool = False
              ) -> tuple[float, int]:
    """(summed NLL over target tokens, target token count); the head runs on target positions only."""
    import torch
    from tqdm import tqdm

    total, count = 0.0, 0
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    model.eval()
    with torch.no_grad():
        for b in tqdm(range(0, len(order), batch), desc="eval", unit="batch", disable=not progress):
            rows = [pairs[i] for i in order[b:b + batch]]
            width = max(len(c) + len(t) for c, t in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            labels = np.full((len(rows), width), -100, dtype=np.int64)
            for r, (c, t) in enumerate(rows):
                ids[r, : len(c) + len(t)] = c + t
                labels[r, len(c): len(c) + len(t)] = t
            nll, n = labelled_nll(model, torch.from_numpy(ids), torch.from_numpy(labels), reduction="sum")
            total += nll.item()
            count += n
    return total, count


def labelled_nll(model, ids, labels, reduction: str = "mean"):
    """(next-token NLL over labelled positions, their count). The vocabulary projection runs only where
    there is a label (no padding, no masked context): with a 50k vocabulary that is most of the compute."""
    import torch.nn.functional as F

    hidden = model.transformer(input_ids=ids).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[keep]).float()
    return F.cross_entropy(logits, target[keep], reduction=reduction), int(keep.sum())


def reply_perplexity(model, pairs: list[tuple[list[int], list[int]]], batch: int = 16) -> float:
    total, count = reply_nll(model, pairs, batch)
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> int:
    """dialogpt-onnx evaluate CKPT [CKPT ...] [--data FILE] [--conversations N] [--context-tokens T]"""
    from dialogpt_onnx.corpora import TOPICAL_CHAT
    from dialogpt_onnx.runtime.cli import OneLineParser, nonnegative_int, positive_int, run_command

    p = OneLineParser(prog="dialogpt-onnx evaluate", description="Reply perplexity on held-out dialogue "
                      "(context: the last T tokens of the earlier turns; target: the next turn + EOS).",
                      examples=("dialogpt-onnx evaluate models/chat-8x256 --conversations 50",))
    p.add_argument("checkpoints", nargs="+", help="checkpoint dirs (any form the exporter reads)")
    p.add_argument("--data", default=str(TOPICAL_CHAT / "test_freq.json"),
                   help="held-out dialogues (default: the shipped Topical-Chat test_freq)")
    p.add_argument("--conversations", type=nonnegative_int, default=0, help="first N only (default: all)")
    p.add_argument("--context-tokens", type=positive_int, default=128)
    a = p.parse_args(argv)
    return run_command(lambda: _evaluate(a.checkpoints, a.data, a.conversations, a.context_tokens))


def _evaluate(checkpoints: list[str], data: str, conversations: int, context_tokens: int) -> None:
    from dialogpt_onnx.runtime.cli import require_extra

    require_extra("train", "torch", "transformers")
    from dialogpt_onnx.corpora import DIALOGPT_TOKENIZER, read_dialogues
    from dialogpt_onnx.export.checkpoint import load_checkpoint, torch_model
    from dialogpt_onnx.export.tokenizer import build_tokenizer

    convs = read_dialogues(data)
    convs = convs[:conversations] if conversations else convs
    for path in checkpoints:
        ckpt = load_checkpoint(path, DIALOGPT_TOKENIZER)
        tok = build_tokenizer(ckpt.tokenizer_files)
        pairs = reply_pairs(tok, convs, ckpt.config.eos_token_id, context_tokens)
        total, count = reply_nll(torch_model(ckpt), pairs, progress=True)
        print(f"{path}: reply perplexity {math.exp(total / count):.2f} over {len(pairs)} replies "
              f"({count} tokens) of {len(convs)} conversations in {data}")


if __name__ == "__main__":
    raise SystemExit(main())
