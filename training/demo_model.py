"""Train the small demo model that the quick start bundles until a real trained DialoGPT exists.

A DialoGPT-architecture model (the small config, shrunk) learns causal LM on Topical-Chat dialogues in
DialoGPT's format: every turn followed by <|endoftext|>, a conversation as one text. Minutes of CPU
training: it chats in plausible-looking fragments, far from DialoGPT quality; the config says so.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from runtime.text import EOS_TOKEN_ID as EOS
from runtime.text import encode_turn
from training.corpora import DIALOGPT_TOKENIZER, TOPICAL_CHAT, dialogpt_config, tokenizer_files

LABEL = "demo: trained {minutes:.0f} min on Topical-Chat valid splits; not DialoGPT quality"


def dialogues(files: list[Path]) -> list[list[str]]:
    out = []
    for f in files:
        for conv in json.loads(f.read_text()).values():
            out.append([m["message"].strip() for m in conv["content"] if m["message"].strip()])
    return out


def windows(tok, convs: list[list[str]], length: int) -> np.ndarray:
    """Token windows of `length` that start at a turn boundary, padded with EOS."""
    rows = []
    for conv in convs:
        ids = [encode_turn(tok, t, EOS) for t in conv]
        for start in range(0, len(ids), 2):
            seq = [t for turn in ids[start:] for t in turn][:length]
            if len(seq) >= 16:
                rows.append(seq + [EOS] * (length - len(seq)))
    return np.array(rows, dtype=np.int64)


def train(out: Path, minutes: float, layers: int, width: int, heads: int, length: int, batch: int,
          lr: float, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    from export.tokenizer import build_tokenizer

    tokdir = DIALOGPT_TOKENIZER
    tok: Tokenizer = build_tokenizer(tokenizer_files())
    tc = TOPICAL_CHAT
    train_rows = windows(tok, dialogues([tc / "valid_freq.json", tc / "valid_rare.json"]), length)
    eval_rows = windows(tok, dialogues([tc / "test_freq.json"]), length)[:256]
    raw = dialogpt_config("small")
    raw.update(n_layer=layers, n_embd=width, n_head=heads)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = GPT2LMHeadModel(GPT2Config(**raw))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    deadline = time.time() + minutes * 60
    step, bar = 0, tqdm(desc="train", unit="step")
    while time.time() < deadline:
        idx = rng.integers(0, len(train_rows), batch)
        x = torch.from_numpy(train_rows[idx])
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        ev = np.mean([model(torch.from_numpy(eval_rows[i:i + 32]), labels=torch.from_numpy(eval_rows[i:i + 32]))
                      .loss.item() for i in range(0, len(eval_rows), 32)])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["_weights"] = LABEL.format(minutes=minutes)
    cfg["_training"] = {"steps": step, "batch": batch, "length": length, "lr": lr,
                        "eval_loss_test_freq": round(float(ev), 3), "eval_ppl": round(math.exp(ev), 1)}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / "generation_config.json").unlink(missing_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokdir / f, tmp / f)
    shutil.copyfile(tokdir / "LICENSE", tmp / "LICENSE-tokenizer")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}: {step} steps, test_freq loss {ev:.3f} (ppl {math.exp(ev):.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    train(Path(a.out), a.minutes, a.layers, a.width, a.heads, a.length, a.batch, a.lr, a.seed)


if __name__ == "__main__":
    main()
