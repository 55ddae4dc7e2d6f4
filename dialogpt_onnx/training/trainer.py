"""DialoGPT's recipe on a CPU: causal LM over EOS-joined turns, from scratch or from a checkpoint.

OUT_DIR holds, at every checkpoint and at the end, a checkpoint `dialogpt-onnx export` takes as is
(config.json, model.safetensors in fp16, vocab.json + merges.txt and the tokenizer's license) and
`train_state/` (fp32 weights, optimizer, step, RNG, settings) from which the same command resumes:
a resumed run takes exactly the batches and random draws an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dialogpt_onnx.corpora import (
    DIALOGPT_TOKENIZER,
    DataError,
    data_licenses,
    dialogpt_config,
    read_dialogues,
    tokenizer_files,
    topical_chat,
)
from dialogpt_onnx.runtime.checks import integer
from dialogpt_onnx.runtime.manifest import ModelShape
from dialogpt_onnx.runtime.sampling import CHAT_DEFAULTS
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID, encode_turn

from .evaluate import labelled_nll, reply_pairs, reply_perplexity
from .report import CURVE_FILE, plot_curve
from .windows import Batches, dialogue_windows

STATE_DIR = "train_state"
STATE_FILE = "state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the result; a resumed run must be given the same."""

    data: tuple[str, ...]
    eval: str | None = None  # held-out dialogue file; None: the shipped Topical-Chat test_freq
    init: str | None = None  # checkpoint dir to fine-tune; None: train from scratch
    layers: int = 6  # from-scratch shape (DialoGPT-small's config, narrowed)
    width: int = 256
    heads: int = 4
    length: int = 256  # tokens per window
    batch: int = 16  # windows per micro-batch
    accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    warmup: int = 200  # steps of linear warm-up, then cosine decay to lr/10 at max_steps
    max_steps: int = 0  # 0: one pass over the data
    weight_decay: float = 0.01
    seed: int = 0
    mask_first_turn: bool = False  # see windows.py
    # learn P(earlier turns | later turns): every dialogue read last turn first (the backward model that
    # MMI reranking scores candidates with, as DialoGPT's reverse model)
    reverse: bool = False
    dtype: str = "fp32"  # "bf16": autocast (measure: slower than fp32 without AVX-512 BF16)
    eval_every: int = 500  # steps between held-out evaluations (0: only at the end)
    eval_conversations: int = 50  # held-out conversations per periodic evaluation

    def model_shape(self) -> ModelShape:
        """The from-scratch model: DialoGPT-small's config (vocabulary, context, EOS) at this depth and width."""
        base = dialogpt_config("small")
        return ModelShape(n_layer=self.layers, n_head=self.heads, head_dim=self.width // self.heads,
                          n_positions=base["n_positions"], vocab_size=base["vocab_size"],
                          eos_token_id=base.get("eos_token_id", EOS_TOKEN_ID))

    def check(self) -> None:
        for name in ("layers", "width", "heads", "length", "batch", "accum"):
            integer(name, getattr(self, name), 1, error=DataError)
        if self.width % self.heads:
            raise DataError(f"width {self.width} is not divisible by heads {self.heads}: change one of them")
        if not self.lr > 0 or self.max_steps < 0 or self.warmup < 0 or self.eval_every < 0:
            raise DataError("lr must be > 0; max_steps, warmup and eval_every >= 0")
        if self.dtype not in ("fp32", "bf16"):
            raise DataError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if not self.data:
            raise DataError("no training data: give --data PATH (or --data chitchat)")


@dataclass
class Progress:
    """What a run reports: steps done, the latest losses, where it stopped."""

    step: int = 0
    max_steps: int = 0
    train_loss: float = float("nan")
    eval_ppl: float | None = None
    tokens_per_s: float = 0.0
    finished: bool = False
    ran: int = 0  # steps this call of run() made
    log: list[dict] = field(default_factory=list)  # every evaluation (train_log.jsonl)
    losses: list[list[float]] = field(default_factory=list)  # [step, train loss] of every step: the curve


def _build_model(s: Settings):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if s.init:
        from dialogpt_onnx.export.checkpoint import load_checkpoint, torch_model
        from dialogpt_onnx.export.errors import ExportError

        try:
            ckpt = load_checkpoint(s.init, DIALOGPT_TOKENIZER)
        except ExportError as e:
            raise DataError(f"--init: {e}") from None
        model = torch_model(ckpt)
        if not ckpt.config.scale_attn_by_inverse_layer_idx:  # SDPA is faster and exact for these
            model.config._attn_implementation = "sdpa"
        return model.train()
    shape = s.model_shape()
    raw = {**dialogpt_config("small"), "n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head}
    torch.manual_seed(s.seed)
    return GPT2LMHeadModel(GPT2Config(**raw)).train()


def warmup_steps(s: Settings, total: int) -> int:
    """The warm-up a run of `total` steps gets: --warmup, at most a quarter of the run (a 4-step fine-tune
    with the default 200 would end at 2% of its learning rate and learn nothing)."""
    return min(s.warmup, total // 4)


def _lr(s: Settings, step: int, total: int) -> float:
    warmup = warmup_steps(s, total)
    if step < warmup:
        return s.lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


GENERATION_CONFIG = "generation_config.json"


def hf_config(config: Any, training: dict) -> dict:
    """A plain Hugging Face GPT-2 config.json: the architecture named (llama.cpp's converter and transformers'
    Auto classes read it), only what differs from GPT-2's defaults (no generation fields: those go to
    generation_config.json), and how the model was trained under `_training`."""
    config.architectures = ["GPT2LMHeadModel"]
    cfg = config.to_diff_dict()
    for k in ("_attn_implementation_autoset", "_name_or_path", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    return {**cfg, "torch_dtype": "float16", "_training": training}


def generation_config(cfg: dict) -> dict:
    """generation_config.json: the end-of-turn token (DialoGPT's turns end with it) and the runtime's chat
    defaults, so that transformers' generate() replies as the runtime's chat does."""
    return {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
            "pad_token_id": cfg["eos_token_id"], "max_length": cfg["n_positions"], **CHAT_DEFAULTS}


def _check_out(out: Path) -> None:
    """OUT_DIR: absent, empty, or a previous training output (never a directory of someone else's files)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / STATE_DIR).is_dir())):
        raise DataError(f"{out} exists and is not a training output of this project: choose another --out")


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, settings: Settings, out: Path, threads: int | None = None, progress: bool = True) -> None:
        import torch

        from dialogpt_onnx.export.tokenizer import build_tokenizer

        settings.check()
        _check_out(out)
        self.s, self.out, self.show = settings, out, progress
        if threads:
            torch.set_num_threads(threads)
        self.tok = build_tokenizer(tokenizer_files())
        self.eos = EOS_TOKEN_ID
        windows = []
        for src in settings.data:
            for conv in read_dialogues(src):
                conv = conv[::-1] if settings.reverse else conv
                windows += dialogue_windows([encode_turn(self.tok, t, self.eos) for t in conv], settings.length)
        if not windows:
            raise DataError("the data gives no training window of two turns: check --data and --length")
        self.batches = Batches(windows, settings.batch, settings.mask_first_turn, self.eos, settings.seed)
        held_out = read_dialogues(settings.eval) if settings.eval else topical_chat("test_freq")
        held_out = [c[::-1] for c in held_out] if settings.reverse else held_out
        self.eval_pairs = reply_pairs(self.tok, held_out[: settings.eval_conversations], self.eos)
        self.total = settings.max_steps or max(1, len(self.batches) // settings.accum)
        self.model = _build_model(settings)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.p = Progress(max_steps=self.total)
        self._epoch, self._order = -1, list[Any]()
        self._resume()

    # -- state ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        import torch

        path = self.out / STATE_DIR / STATE_FILE
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        # a setting added after the run started counts as its default; a larger --max-steps extends the run
        saved = {**{f.name: f.default for f in fields(Settings) if f.default is not MISSING}, **state["settings"]}
        changed = sorted(k for k, v in asdict(self.s).items() if saved.get(k) != v and k != "max_steps")
        if changed:
            raise DataError(f"{self.out} holds a run with other settings ({', '.join(changed)}): give the same "
                            "settings to resume, or another --out")
        if self.total < state["step"]:
            raise DataError(f"{self.out} holds a run already at step {state['step']}: give --max-steps of at "
                            f"least {state['step']} to resume or extend it")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.p.step, self.p.log, self.p.losses = state["step"], state["log"], state.get("losses", [])
        if self.p.log:  # what the run reached, for a report even when no step is left to run
            self.p.train_loss, self.p.eval_ppl = self.p.log[-1]["train_loss"], self.p.log[-1]["eval_reply_ppl"]

    def save(self) -> None:
        import torch

        state_dir = self.out / STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {"settings": asdict(self.s), "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "torch_rng": torch.get_rng_state(), "step": self.p.step, "log": self.p.log,
                 "losses": self.p.losses}
        _write_atomic(state_dir / STATE_FILE, lambda p: torch.save(state, p))
        self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        """The export-ready checkpoint: fp16 safetensors + config (with how it was trained) + tokenizer."""
        import copy

        from safetensors.torch import save_file

        half = copy.deepcopy(self.model).half()
        sd = {k: v.contiguous() for k, v in half.state_dict().items() if k != "lm_head.weight"}  # tied
        _write_atomic(self.out / "model.safetensors", lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
        cfg = hf_config(self.model.config, {"settings": asdict(self.s), "step": self.p.step,
                                            "max_steps": self.total, "log": self.p.log[-1] if self.p.log else None})
        _write_atomic(self.out / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=2)))
        gen = json.dumps(generation_config(cfg), indent=2)
        _write_atomic(self.out / GENERATION_CONFIG, lambda p: p.write_text(gen))
        files = {**tokenizer_files(), "LICENSE-tokenizer": DIALOGPT_TOKENIZER / "LICENSE",
                 **data_licenses(self.s.data)}  # the data's licenses travel with weights trained on it
        for name, src in files.items():
            if not (self.out / name).is_file():
                shutil.copyfile(src, self.out / name)

    # -- loop -------------------------------------------------------------------------------------
    def _micro_batch(self, micro: int):
        import torch

        epoch, k = divmod(micro, len(self.batches))
        if self._epoch != epoch:
            self._epoch, self._order = epoch, self.batches.order(epoch)
        ids, labels = self.batches.tensors(self._order[k])
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def evaluate(self) -> float:
        ppl = reply_perplexity(self.model, self.eval_pairs)
        self.model.train()
        return ppl

    def run(self, minutes: float | None = None, save_every_minutes: float = 10.0) -> Progress:
        import torch
        from tqdm import tqdm

        s, p = self.s, self.p
        deadline = time.time() + minutes * 60 if minutes else None
        last_save = time.time()
        bar = tqdm(total=self.total, initial=p.step, desc="train", unit="step", disable=not self.show)
        tokens, t0 = 0, time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.dtype == "bf16")
        while p.step < self.total:
            for g in self.opt.param_groups:
                g["lr"] = _lr(s, p.step, self.total)
            self.opt.zero_grad(set_to_none=True)
            total_loss = 0.0
            for a in range(s.accum):
                ids, labels = self._micro_batch(p.step * s.accum + a)
                with autocast:
                    loss, n = labelled_nll(self.model, ids, labels)
                (loss / s.accum).backward()
                total_loss += loss.item() / s.accum
                tokens += n
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            p.step += 1
            p.ran += 1
            p.train_loss = total_loss
            p.losses.append([p.step, round(total_loss, 4)])
            p.tokens_per_s = tokens / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss:.3f}", tok_s=f"{p.tokens_per_s:.0f}",
                            lr=f"{_lr(s, p.step - 1, self.total):.1e}")
            if s.eval_every and p.step % s.eval_every == 0:
                self._log_eval()
            if time.time() - last_save > save_every_minutes * 60:
                self.save()
                last_save = time.time()
            if deadline and time.time() > deadline:
                break
        bar.close()
        p.finished = p.step >= self.total
        if p.finished and (not p.log or p.log[-1]["step"] != p.step):
            self._log_eval()
        self.save()
        return p

    def _log_eval(self) -> None:
        p = self.p
        p.eval_ppl = self.evaluate()
        entry = {"step": p.step, "train_loss": round(p.train_loss, 4), "eval_reply_ppl": round(p.eval_ppl, 2),
                 "tokens_per_s": round(p.tokens_per_s), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        p.log.append(entry)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
        s = self.s
        shape = f"from {Path(s.init).name}" if s.init else f"{s.layers}x{s.width}"
        plot_curve(p.log, p.losses, self.out / CURVE_FILE,
                   f"{shape}, windows of {s.length}, batch {s.batch}x{s.accum}, lr {s.lr:g} after "
                   f"{warmup_steps(s, self.total)} warm-up steps, cosine to {s.lr / 10:g} at step {self.total}")
        if self.show:
            from tqdm import tqdm

            tqdm.write(f"step {p.step}: train loss {p.train_loss:.3f}, held-out reply perplexity {p.eval_ppl:.1f}")
