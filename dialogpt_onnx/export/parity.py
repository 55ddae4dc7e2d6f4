"""Parity of an exported model against transformers' GPT2LMHeadModel in fp32, on dialogue prompts.

For each prompt, the ONNX model decodes N greedy tokens through the runtime (prefill + KV-cache steps)
and records every step's logits. transformers then
- reads prompt + those tokens in one teacher-forced pass: max |Δlogit| and top-1 agreement, step by step;
- greedy-decodes N tokens on its own: greedy agreement (shared prefix) and exact match.
EOS is banned on both sides (min_new_tokens = N), so every prompt yields exactly N tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from dialogpt_onnx.runtime.checks import is_number, number
from dialogpt_onnx.runtime.generate import generate_ids
from dialogpt_onnx.runtime.graph import open_graph
from dialogpt_onnx.runtime.manifest import Manifest
from dialogpt_onnx.runtime.sampling import SamplingOptions

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
                f"greedy agreement {self.greedy_agreement:.3f}, identical {self.greedy_identical}/{self.prompts}")


def check_parity(ref: GPT2LMHeadModel, model_dir: Path, manifest: Manifest, prompts: list[list[int]],
                 new_tokens: int = 64, threads: int | None = None, progress: bool = True) -> ParityReport:
    """`ref`: the checkpoint as transformers' model (checkpoint.torch_model); `model_dir` holds the graph
    that `manifest` describes (the manifest need not be written yet)."""
    import torch

    dec = open_graph(model_dir, manifest, threads=threads).new_cache()
    # EOS is banned on both sides (min = max new tokens, as transformers' min_new_tokens does), so every
    # prompt yields exactly N comparable tokens
    opts = SamplingOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    diffs, means, top1, greedy, identical = [], [], [], [], 0
    # counted in tokens, each decoded twice (ONNX, then transformers' own greedy decode): on a loaded
    # machine a prompt can take many seconds, and a bar that moves only per prompt looks hung
    bar = tqdm(total=2 * len(prompts) * new_tokens, desc="verify", unit="token", disable=not progress)
    stepped = _counting_tokens(bar)
    for i, prompt in enumerate(prompts):
        bar.set_postfix_str(f"prompt {i + 1}/{len(prompts)}", refresh=False)
        steps: list[np.ndarray] = []

        def record(_: int, lg: np.ndarray, steps: list[np.ndarray] = steps) -> None:
            steps.append(lg[0].copy())
            bar.update()

        ids = [int(t[0]) for t in generate_ids(dec, [prompt], opts, manifest.shape.eos_token_id, stop_at_eos=False,
                                               on_logits=record)]
        onnx_logits = np.stack(steps)
        with torch.no_grad():
            full = torch.tensor([prompt + ids])
            tf = ref(full).logits[0, len(prompt) - 1: len(prompt) - 1 + len(ids)].numpy()
            gen = ref.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=manifest.shape.eos_token_id,
                               attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               stopping_criteria=stepped)
        torch_ids = gen[0, len(prompt):].tolist()
        d = np.abs(onnx_logits - tf)
        diffs.append(float(d.max()))
        means.append(float(d.mean()))
        top1.append(float(np.mean(onnx_logits.argmax(-1) == tf.argmax(-1))))
        same = next((i for i, (a, b) in enumerate(zip(ids, torch_ids, strict=True)) if a != b), len(ids))
        greedy.append(same / len(ids))
        identical += int(ids == torch_ids)
    bar.close()
    return ParityReport(len(prompts), new_tokens, max(diffs), float(np.mean(means)), float(np.mean(top1)),
                        float(np.mean(greedy)), identical)



def _counting_tokens(bar: tqdm) -> Any:
    """A transformers stopping criterion that never stops generate() and moves the bar once per token
    (transformers is imported only when parity runs)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Counting(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.BoolTensor:
            bar.update()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    return StoppingCriteriaList([Counting()])
