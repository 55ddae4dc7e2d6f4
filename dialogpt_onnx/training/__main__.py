"""CLI: dialogpt-onnx train --data PATH [--data PATH ...] [--init CKPT_DIR] --out DIR
                          [--max-steps N] [--minutes M] [--eval PATH] ...

Trains (or fine-tunes, with --init) a DialoGPT-format model: causal LM over dialogues whose turns each
end with <|endoftext|>. Run the same command again to resume from OUT's last checkpoint. OUT is a
checkpoint `dialogpt-onnx export OUT MODEL_DIR` takes as is. Exit codes: 0 done (or stopped by --minutes,
resumable), 2 a user error (one line), 3 a bug (trace shown), 130 interrupted (the last checkpoint is kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dialogpt_onnx.runtime.cli import (
    OneLineParser,
    finite_float,
    nonnegative_int,
    positive_int,
    require_extra,
    run_command,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="dialogpt-onnx train", description=__doc__, examples=(
        "dialogpt-onnx train --data chitchat --out runs/chat --minutes 90",
        "dialogpt-onnx train --data my.jsonl --init models/chat-8x256 --max-steps 200 --out runs/tuned",
        "dialogpt-onnx train --data chitchat --out runs/chat --minutes 90   # again: resumes where it stopped"))
    p.add_argument("--data", action="append", required=True,
                   help="Topical-Chat .json, .jsonl ({\"turns\": [...]} per line), .tsv (turns split by ' EOS '), "
                        "or 'chitchat' (the chitchat-dataset package); repeatable")
    p.add_argument("--out", required=True, help="output dir: an export-ready checkpoint + train_state/ to resume")
    p.add_argument("--init", help="checkpoint dir to fine-tune (any form the exporter reads)")
    p.add_argument("--eval", help="held-out dialogue file (default: the shipped Topical-Chat test_freq)")
    p.add_argument("--max-steps", type=nonnegative_int, default=0, help="optimizer steps (default: one epoch)")
    p.add_argument("--minutes", type=finite_float, default=None, help="stop (resumably) after this long")
    p.add_argument("--layers", type=positive_int, default=6, help="from scratch: transformer blocks")
    p.add_argument("--width", type=positive_int, default=256, help="from scratch: hidden size")
    p.add_argument("--heads", type=positive_int, default=4, help="from scratch: attention heads")
    p.add_argument("--length", type=positive_int, default=256, help="tokens per training window")
    p.add_argument("--batch", type=positive_int, default=16, help="windows per micro-batch")
    p.add_argument("--accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=finite_float, default=None, help="peak learning rate (default 1e-3; 5e-5 with --init)")
    p.add_argument("--warmup", type=nonnegative_int, default=200,
                   help="linear warm-up steps (at most a quarter of the run), then cosine decay")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="data order, initialization, dropout")
    p.add_argument("--mask-first-turn", action="store_true",
                   help="no loss on each window's first turn (it has no context); off by default: an A/B "
                        "measured 4%% worse held-out reply perplexity with it (docs/training.md)")
    p.add_argument("--reverse", action="store_true",
                   help="train the backward model P(source | reply) for MMI reranking: dialogues read last turn first")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    p.add_argument("--eval-every", type=nonnegative_int, default=500,
                   help="steps between held-out evaluations (0: only at the end)")
    p.add_argument("--eval-conversations", type=positive_int, default=50,
                   help="held-out conversations per periodic evaluation")
    p.add_argument("--save-every-minutes", type=finite_float, default=10.0, help="checkpoint interval")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    return run_command(lambda: _train(a), on_interrupt="the last checkpoint in --out is kept; run the same "
                                                       "command to resume")


def _train(a: argparse.Namespace) -> None:
    chitchat = ["chitchat_dataset"] if "chitchat" in a.data else []
    require_extra("train", "torch", "transformers", "safetensors", *chitchat)
    from .trainer import Settings, Trainer

    settings = Settings(
        data=tuple(a.data), eval=a.eval, init=a.init, layers=a.layers, width=a.width, heads=a.heads,
        length=a.length, batch=a.batch, accum=a.accum, lr=a.lr or (5e-5 if a.init else 1e-3), warmup=a.warmup,
        max_steps=a.max_steps, seed=a.seed, mask_first_turn=a.mask_first_turn, reverse=a.reverse, dtype=a.dtype,
        eval_every=a.eval_every, eval_conversations=a.eval_conversations)
    trainer = Trainer(settings, Path(a.out), threads=a.threads, progress=not a.quiet)
    p = trainer.run(minutes=a.minutes, save_every_minutes=a.save_every_minutes)
    state = "finished" if p.finished else "stopped (run the same command to resume)"
    if p.ran == 0 and p.finished:
        state = "already finished (give a larger --max-steps to train further)"
    ppl = f", held-out reply perplexity {p.eval_ppl:.1f}" if p.eval_ppl is not None else ""
    loss = f": train loss {p.train_loss:.3f}{ppl}" if p.train_loss == p.train_loss else ""  # nan: no step yet
    print(f"{state} at step {p.step}/{p.max_steps}{loss}; checkpoint in {a.out}")


if __name__ == "__main__":
    sys.exit(main())
