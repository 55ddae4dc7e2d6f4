"""Parity of an exported model against transformers' GPT2LMHeadModel in fp32, on dialogue prompts.

For each prompt, the ONNX model decodes N greedy tokens through the runtime (prefill + KV-cache steps)
and records every step's logits. Its session is closed; then transformers reads every prompt + those
tokens in one teacher-forced pass (batched): max |Δlogit| and top-1 agreement step by step, and greedy
agreement: the share of tokens before the first step where transformers' own greedy choice, given the same
history, differs. That is exactly where transformers' greedy decode would part from the ONNX one (up to
that step both saw the same tokens), so its N sequential steps are not run: one pass instead of N.
EOS is banned on both sides (min_new_tokens = N), so every prompt yields exactly N tokens. The ONNX
session is gone before transformers runs: an export holds one of the two at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dialogpt_onnx.runtime.checks import is_number, number
from dialogpt_onnx.runtime.generate import generate_ids
from dialogpt_onnx.runtime.graph import open_graph
from dialogpt_onnx.runtime.manifest import Manifest
from dialogpt_onnx.runtime.sampling import SamplingOptions
from dialogpt_onnx.runtime.scoring import log_softmax

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel


@dataclass(frozen=True)
class Thresholds:
    max_logit_diff: float = 1e-3  # fp32
    min_top1: float = 0.90  # quantized: share of steps whose argmax matches
    min_greedy: float = 0.50  # quantized: mean share of the greedy sequence identical to fp32's

    def check(self) -> None:
        from .errors import ExportError

        d = self.max_logit_diff
        number("max_logit_diff", d, "a number >= 0", is_number(d) and d >= 0, error=ExportError)
        for name in ("min_top1", "min_greedy"):
            v = getattr(self, name)
            number(name, v, "a number in [0, 1]", is_number(v) and 0.0 <= v <= 1.0, error=ExportError)


@dataclass
class ParityReport:
    prompts: int
    new_tokens: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    greedy_agreement: float
    greedy_identical: int  # prompts whose N greedy tokens are identical
    mean_kl: float = 0.0  # mean per step of KL(P_fp32 ‖ Q_onnx), nats: what picks int4's 8-bit layers

    def failures(self, variant: str, th: Thresholds) -> list[str]:
        out = []
        if variant == "fp32":
            if self.max_abs_logit_diff > th.max_logit_diff:
                out.append(f"max |Δlogit| {self.max_abs_logit_diff:.2e} > {th.max_logit_diff:.0e}")
            if self.greedy_identical < self.prompts:
                out.append(f"greedy tokens differ on {self.prompts - self.greedy_identical}/{self.prompts} prompts")
        else:
            if self.top1_agreement < th.min_top1:
                out.append(f"top-1 agreement {self.top1_agreement:.3f} < {th.min_top1}")
            if self.greedy_agreement < th.min_greedy:
                out.append(f"greedy agreement {self.greedy_agreement:.3f} < {th.min_greedy}")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"max |Δlogit| {self.max_abs_logit_diff:.2e}, top-1 {self.top1_agreement:.3f}, "
                f"greedy agreement {self.greedy_agreement:.3f}, identical {self.greedy_identical}/{self.prompts}, "
                f"mean KL {self.mean_kl:.2e}")


def check_parity(reference: Callable[[], GPT2LMHeadModel], model_dir: Path, manifest: Manifest,
                 prompts: list[list[int]], new_tokens: int = 64, threads: int | None = None,
                 progress: bool = True) -> ParityReport:
    """`reference` makes the checkpoint as transformers' model (checkpoint.torch_model), called once the ONNX
    session is closed; `model_dir` holds the graph that `manifest` describes (the manifest need not be
    written yet)."""
    eos = manifest.shape.eos_token_id
    # counted in tokens: on a loaded machine a prompt can take many seconds, and a bar that moves only per
    # prompt looks hung; the reference's pass counts one per prompt
    bar = tqdm(total=len(prompts) * (new_tokens + 1), desc="verify", unit="token", disable=not progress)
    ids, onnx_logits = _onnx_greedy(model_dir, manifest, prompts, new_tokens, threads, bar)
    bar.set_postfix_str("transformers", refresh=False)
    tf = _teacher_forced(reference(), prompts, ids, eos, bar)
    bar.close()
    diffs, means, top1, greedy, identical, kl = [], [], [], [], 0, []
    for got, lg, ref in zip(ids, onnx_logits, tf, strict=True):
        d = np.abs(lg - ref)
        diffs.append(float(d.max()))
        means.append(float(d.mean()))
        kl.append(kl_divergence(ref, lg))
        top1.append(float(np.mean(lg.argmax(-1) == ref.argmax(-1))))
        ref[:, eos] = -np.inf  # banned, as in the ONNX decode
        differs = np.flatnonzero(ref.argmax(-1) != np.asarray(got))
        same = int(differs[0]) if len(differs) else len(got)
        greedy.append(same / len(got))
        identical += int(same == len(got))
    return ParityReport(len(prompts), new_tokens, max(diffs), float(np.mean(means)), float(np.mean(top1)),
                        float(np.mean(greedy)), identical, float(np.mean(kl)))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) ‖ softmax(q)): the figure of llama.cpp's --kl-divergence."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.mean(np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0)))


def _onnx_greedy(model_dir: Path, manifest: Manifest, prompts: list[list[int]], new_tokens: int,
                 threads: int | None, bar: tqdm) -> tuple[list[list[int]], list[np.ndarray]]:
    """Each prompt's N greedy tokens and the logits of every step, through the runtime."""
    dec = open_graph(model_dir, manifest, threads=threads).new_cache()
    opts = SamplingOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    ids, logits = [], []
    for i, prompt in enumerate(prompts):
        bar.set_postfix_str(f"prompt {i + 1}/{len(prompts)}", refresh=False)
        steps: list[np.ndarray] = []

        def record(_: int, lg: np.ndarray, steps: list[np.ndarray] = steps) -> None:
            steps.append(lg[0].copy())
            bar.update()

        ids.append([int(t[0]) for t in generate_ids(dec, [prompt], opts, manifest.shape.eos_token_id,
                                                    stop_at_eos=False, on_logits=record)])
        logits.append(np.stack(steps))
    del dec
    gc.collect()  # the session's weights go before the reference's arrive
    return ids, logits


def _teacher_forced(ref: GPT2LMHeadModel, prompts: list[list[int]], ids: list[list[int]], eos: int,
                    bar: tqdm, batch: int = 4) -> list[np.ndarray]:
    """transformers' logits for the steps that chose `ids`, `batch` prompts a pass (right-padded: positions
    count from each row's start and no real token attends to the padding after it)."""
    import torch

    out = []
    for start in range(0, len(prompts), batch):
        rows = [p + t for p, t in zip(prompts[start:start + batch], ids[start:start + batch], strict=True)]
        width = max(map(len, rows))
        x = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        with torch.no_grad():
            logits = ref(x, attention_mask=mask).logits.numpy()
        for row, p, t in zip(logits, prompts[start:start + batch], ids[start:start + batch], strict=True):
            out.append(np.array(row[len(p) - 1: len(p) - 1 + len(t)]))
        bar.update(len(rows))
    return out
