"""Reply quality vs chat history budget: how well a model predicts the real next turn of a Topical-Chat
conversation when the history is cut to the most recent whole turns that fit a token budget (the
last user turn is always kept; every reply is scored at every budget).

    python -m benchmarks.studies.history_budget CHECKPOINT_DIR [--conversations 20] [--budgets 32,64,128,256,512,960]

Prints mean negative log-likelihood per token of the true reply (lower is better) per budget; the
chat runtime's default budget is the smallest one within 1% of the best.
"""

from __future__ import annotations

import argparse

import numpy as np

from dialogpt_onnx.runtime.cli import OneLineParser


def measure(ckpt_dir: str, conversations: int, budgets: list[int], min_turn: int = 8) -> dict[int, float]:
    import torch
    from tqdm import tqdm

    from dialogpt_onnx.corpora import DIALOGPT_TOKENIZER, topical_chat
    from dialogpt_onnx.export.checkpoint import load_checkpoint, torch_model
    from dialogpt_onnx.export.tokenizer import build_tokenizer
    from dialogpt_onnx.runtime.text import encode_turn

    ck = load_checkpoint(ckpt_dir, DIALOGPT_TOKENIZER)
    model, tok, eos = torch_model(ck), build_tokenizer(ck.tokenizer_files), ck.config.eos_token_id
    convs = topical_chat("test_freq", limit=conversations)
    nll: dict[int, list[float]] = {b: [] for b in budgets}
    for conv in tqdm(convs, desc="conversations"):
        turns = [encode_turn(tok, t, eos) for t in conv]
        for t in range(min_turn, len(turns)):
            target = turns[t]
            for b in budgets:  # every target is scored at every budget: a paired comparison
                ctx: list[int] = list(turns[t - 1])  # the user's turn is always kept, as in the chat runtime
                for turn in reversed(turns[:t - 1]):  # then the most recent whole turns that fit
                    if len(ctx) + len(turn) > b:
                        break
                    ctx = turn + ctx
                ids = torch.tensor([ctx + target])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1:-1].float(), -1)
                nll[b].append(float(-logp[torch.arange(len(target)), torch.tensor(target)].mean()))
    return {b: float(np.mean(v)) for b, v in nll.items() if v}


def main() -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--conversations", type=int, default=20)
    p.add_argument("--budgets", default="32,64,128,256,512,960")
    a = p.parse_args()
    res = measure(a.checkpoint, a.conversations, [int(x) for x in a.budgets.split(",")])
    best = min(res.values())
    for b, v in res.items():
        print(f"budget {b:5d} tokens: reply NLL {v:.3f}{'  <- best' if v == best else ''}")
    print(f"smallest budget within 1% of the best: {min(b for b, v in res.items() if v <= best * 1.01)}")


if __name__ == "__main__":
    main()
