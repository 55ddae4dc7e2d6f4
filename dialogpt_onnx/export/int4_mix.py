"""Which int4 mix an export writes: the smallest whose fidelity stays near the most faithful one's.

Mixes, most faithful (and largest) first; all keep the tied head / embedding at 8 bits (at 4 bits the
bundled model's KL divergence from fp32 rose 17-fold and half its greedy tokens changed):
- qkv8: 4-bit layers in blocks of 32 with the QKV projections at 8 bits (the bundled model's choice);
- b32 / b64 / b128: every layer 4-bit, in blocks of 32 / 64 / 128 along K.

`auto` measures each on the export's parity prompts (mean KL(P_fp32 ‖ Q) per greedy step, the parity
check's own figure) and keeps the smallest whose KL is at most `kl_ratio` x qkv8's. A ratio, not a fixed
KL: a model's KL depends on its weights and the prompts (the bundled model's qkv8 1.4e-4, DialoGPT-medium's
shape with random weights 1.0e-2), its ratio between mixes much less. The default 1.25 keeps qkv8 on the
bundled model, whose all-4-bit graph has 1.53x its KL and agreed less with fp32 on the scoreboard (0.819 vs
0.862, docs/quantization.md). Measured figures per size: docs/quantization.md, "int4 mix per model".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import ExportError
from .parity import ParityReport
from .quantize import QuantConfig

MIXES = ("qkv8", "b32", "b64", "b128")
DEFAULT_KL_RATIO = 1.25
# the mixes are measured on at least this many parity prompts x greedy tokens, whatever --n-prompts and
# --parity-tokens say: on 1 prompt x 8 tokens the bundled model's all-4-bit mix came within the ratio
MIX_PROMPTS, MIX_TOKENS = 4, 64


def mix_config(name: str, base: QuantConfig) -> QuantConfig:
    """`base`: the int4 default (qkv8); the others drop the 8-bit QKV and set the layers' block size."""
    if name == "qkv8":
        return base
    if name not in MIXES:
        raise ExportError(f"unknown int4 mix '{name}': use auto or one of {', '.join(MIXES)}")
    return replace(base, eight_bit_layers=(), block_size=int(name[1:]))


@dataclass
class Trial:
    mix: str
    model_bytes: int
    parity: ParityReport

    def to_dict(self, reference_kl: float) -> dict:
        return {"mix": self.mix, "weights_mb": round(self.model_bytes / 1e6, 1),
                "mean_kl": self.parity.mean_kl, "kl_ratio": round(self.parity.mean_kl / max(reference_kl, 1e-30), 3),
                "greedy_agreement": self.parity.greedy_agreement}


def choose(base: QuantConfig, kl_ratio: float, trial: Callable[[str, QuantConfig], Trial],
           fit: Callable[[QuantConfig], QuantConfig]) -> tuple[str, dict]:
    """(the mix to write, what was measured for the manifest). `trial(name, config)` builds, writes and
    parity-checks one mix; `fit` shrinks block sizes for tiny models (two mixes may then coincide)."""
    reference = trial("qkv8", fit(base))
    tried, chosen = [reference], "qkv8"
    for name in reversed(MIXES[1:]):  # smallest first: the first within the budget is the smallest
        config = fit(mix_config(name, base))
        name = f"b{config.block_size}"  # what it is once fitted: a tiny model's b128 may be its b64
        if any(t.mix == name for t in tried):
            continue
        t = trial(name, config)
        tried.append(t)
        if t.parity.mean_kl <= kl_ratio * reference.parity.mean_kl:
            chosen = name
            break
    ref_kl = reference.parity.mean_kl
    return chosen, {"chosen": chosen, "rule": f"smallest mix whose mean KL <= {kl_ratio} x qkv8's",
                    "kl_ratio": kl_ratio, "tried": [t.to_dict(ref_kl) for t in tried]}
