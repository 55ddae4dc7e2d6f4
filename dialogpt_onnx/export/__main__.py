"""CLI: dialogpt-onnx export SOURCE OUT_DIR --variant fp32|int8|int4 [--verify] [--overwrite] ...

Exit codes: 0 written, 1 parity below the --verify thresholds (nothing written), 2 a user error (one
line on stderr, nothing written), 3 an internal error (a bug: trace shown, nothing written), 128 + N
ended by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129; nothing written, temporary files removed).
"""

from __future__ import annotations

import argparse
import sys

from dialogpt_onnx.runtime.cli import OneLineParser, finite_float, positive_int, require_extra, run_command

from .int4_mix import DEFAULT_KL_RATIO, MIXES
from .parity import Thresholds
from .pipeline import VARIANTS, ExportOptions, export_model
from .signals import interruptible


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="dialogpt-onnx export", description=__doc__, examples=(
        "dialogpt-onnx export models/chat-8x256 out/chat-int8 --variant int8",
        "dialogpt-onnx export microsoft/DialoGPT-medium out/medium-int4 --variant int4   # online: a hub id",
        "dialogpt-onnx export out/ckpt out/ckpt-int8 --overwrite                  # replace a previous export"))
    p.add_argument("source", help="checkpoint dir (HF or original DialoGPT form) or a hub id when online")
    p.add_argument("out_dir", help="model dir to write (model.onnx, tokenizer.json, manifest.json)")
    p.add_argument("--variant", default="int8", help=f"one of {', '.join(VARIANTS)} (default int8)")
    p.add_argument("--graph", default="contrib",
                   help="contrib (default: fast, onnxruntime contrib ops) or portable (standard ops, via optimum)")
    p.add_argument("--verify", action="store_true", help="fail (exit 1, nothing written) below parity thresholds")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if it holds a previous export (and only the files it wrote)")
    p.add_argument("--all-logits", action="store_true", help="output logits of every position (for scoring)")
    p.add_argument("--tokenizer", help="dir with tokenizer.json or vocab.json + merges.txt, if SOURCE has none")
    p.add_argument("--prompts", help="parity prompts: .txt (one dialogue per line, tab-separated turns) or "
                                     "Topical-Chat .json (default: built-in sample dialogues)")
    p.add_argument("--n-prompts", type=positive_int, default=4)
    p.add_argument("--parity-tokens", type=positive_int, default=64, help="greedy tokens compared per prompt")
    th = Thresholds()
    p.add_argument("--max-logit-diff", type=finite_float, default=th.max_logit_diff, help="fp32 threshold")
    p.add_argument("--min-top1", type=finite_float, default=th.min_top1, help="quantized top-1 agreement threshold")
    p.add_argument("--min-greedy", type=finite_float, default=th.min_greedy,
                   help="quantized greedy agreement threshold")
    p.add_argument("--precise-activations", action="store_true",
                   help="int8: quantize each activation of the MLP and the head twice (the value, then what int8 "
                        "missed): half the KL divergence from fp32, decode ~19%% slower (docs/quantization.md)")
    p.add_argument("--int4-mix", default="auto", metavar="MIX",
                   help=f"int4: auto (default: the smallest of {', '.join(reversed(MIXES))} whose KL divergence from "
                        f"fp32 on the parity prompts is within --int4-kl-ratio of qkv8's; docs/quantization.md) or "
                        "one of them")
    p.add_argument("--int4-kl-ratio", type=finite_float, default=DEFAULT_KL_RATIO,
                   help=f"int4 auto: the KL divergence allowed, as a multiple of qkv8's (default {DEFAULT_KL_RATIO})")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--format", choices=("onnx", "ort"), default="onnx",
                   help="ort: also write model.ort and required_operators.config, for onnxruntime's mobile and "
                        "minimal builds (docs/mobile.md); checked token for token against model.onnx")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    opts = ExportOptions(
        variant=a.variant, graph=a.graph, all_logits=a.all_logits, verify=a.verify, overwrite=a.overwrite,
        tokenizer_dir=a.tokenizer, prompts=a.prompts, n_prompts=a.n_prompts, parity_tokens=a.parity_tokens,
        thresholds=Thresholds(a.max_logit_diff, a.min_top1, a.min_greedy), threads=a.threads,
        progress=not a.quiet, ort_format=a.format == "ort", precise_activations=a.precise_activations,
        int4_mix=a.int4_mix, int4_kl_ratio=a.int4_kl_ratio,
    )
    return run_command(lambda: _export(a, opts), on_interrupt="nothing written")


def _export(a: argparse.Namespace, opts: ExportOptions) -> None:
    require_extra("export", "torch", "transformers", "onnx", "safetensors")
    with interruptible():
        res = export_model(a.source, a.out_dir, opts)
    status = "passed" if not res.failures else "BELOW THRESHOLDS: " + "; ".join(res.failures)
    print(f"wrote {res.out_dir} ({res.bytes_on_disk / 1e6:.1f} MB, {a.variant})")
    print(f"parity vs transformers fp32 on {res.parity.prompts} prompts x {res.parity.new_tokens} tokens: "
          f"{res.parity.summary()} [{status}]")
    print("export seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    if res.int4_mix and res.int4_mix.get("tried"):
        tried = ", ".join(f"{t['mix']} {t['weights_mb']} MB KL x{t['kl_ratio']}" for t in res.int4_mix["tried"])
        print(f"int4 mix: {res.int4_mix['chosen']} ({res.int4_mix['rule']}; measured: {tried})")


if __name__ == "__main__":
    sys.exit(main())
