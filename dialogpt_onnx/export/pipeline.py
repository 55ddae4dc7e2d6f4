"""The export pipeline: load → validate → build (fp32) → quantize → write → verify → manifest → publish.

Everything is written into a temporary dir beside OUT_DIR and swapped in at the end, so a failed or
interrupted export never leaves a half-written model dir (rules in outdir.py). Each thing is made once:
one tokenizer, one torch model (the portable graph's source and the parity reference), one hash per
file, one manifest write.
"""

from __future__ import annotations

import functools
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dialogpt_onnx.runtime.checks import integer, is_number, number, optional_integer
from dialogpt_onnx.runtime.graph_io import PORTABLE_IO, GraphIO, contrib_io
from dialogpt_onnx.runtime.manifest import (
    GRAPHS,
    MODEL_FILE,
    TOKENIZER_FILE,
    VARIANTS,
    GraphKind,
    Manifest,
    Variant,
    file_table,
    write_manifest,
)
from dialogpt_onnx.runtime.ort_floor import floor_of
from dialogpt_onnx.runtime.text import encode_dialogue

from .checkpoint import Checkpoint, check_source, load_checkpoint, torch_model
from .errors import ExportError, ParityError
from .graph import build_graph
from .int4_mix import DEFAULT_KL_RATIO, MIX_PROMPTS, MIX_TOKENS, MIXES, Trial, choose, mix_config
from .onnx_ops import EXTERNAL_ABOVE, GraphEditor
from .outdir import TempDir, check_out_dir, disk_full, disk_full_error, publish
from .parity import ParityReport, Thresholds, check_parity
from .prompts import load_prompts
from .quantize import QuantConfig, fit_to_model, quantize
from .runtime_configs import write_runtime_configs
from .tokenizer import build_tokenizer, write_tokenizer


@dataclass
class ExportOptions:
    variant: Variant = "int8"
    graph: GraphKind = "contrib"  # "contrib": built from weights with onnxruntime contrib ops; "portable": standard ops
    all_logits: bool = False  # logits for every position (scoring, perplexity) instead of the last only
    verify: bool = False  # fail (exit 1, no output) below the parity thresholds
    overwrite: bool = False
    tokenizer_dir: str | None = None
    prompts: str | None = None  # parity prompts file (.txt / Topical-Chat .json); default built-in
    n_prompts: int = 4
    parity_tokens: int = 64
    thresholds: Thresholds = field(default_factory=Thresholds)
    quant: QuantConfig | None = None  # default per variant, see default_quant()
    # int8: each activation row of the MLP and the head quantized twice (the row, then what int8 missed);
    # its fidelity and cost: docs/quantization.md
    precise_activations: bool = False
    threads: int | None = None
    progress: bool = True
    ort_format: bool = False  # also write model.ort + required_operators.config (mobile and minimal builds)
    # int4 without an explicit quant: "auto" measures the mixes and keeps the smallest within int4_kl_ratio x
    # the most faithful one's KL divergence (int4_mix.py), or one of int4_mix.MIXES
    int4_mix: str = "auto"
    int4_kl_ratio: float = DEFAULT_KL_RATIO


@dataclass
class ExportResult:
    out_dir: Path
    parity: ParityReport
    failures: list[str]
    seconds: dict[str, float]
    bytes_on_disk: int
    int4_mix: dict | None = None  # int4: which mix was written, and what was measured to choose it


def default_quant(variant: str, precise_activations: bool = False) -> QuantConfig | None:
    """Measured defaults (docs/quantization.md, "Export choices"; benchmarks.quality and
    benchmarks.studies.quant_ablation on the bundled model). int8: row-wise activations (every token quantized
    on its own: a reply does not depend on its batch or on how its history was cached) with 7-bit per-column
    weights (no u8×s8 saturation on AVX2). MatMulNBits 8-bit block 32 agrees more with fp32 (greedy token
    agreement 0.945 vs 0.911) but changed 1 of 20 chats' replies between cached and recomputed history. int4:
    block-32 4-bit layers (agreement 0.836 vs 0.766 at block 128, decode no slower on AVX-512 VNNI) with the
    tied head / embedding at 8 bits (at 4 bits it lost half the greedy tokens of trained models) and the QKV
    projections at 8 bits, row-wise as the int8 variant's layers (mean KL divergence from fp32 0.000160 vs
    0.000250 all-4-bit, below llama.cpp Q4_K_M's 0.000227: docs/quantization.md). That is the "qkv8" mix; an
    export may write a smaller one where its own KL allows (int4_mix.py)."""
    if variant == "int8":
        # precise_activations: measured per layer kind (benchmarks.studies.quant_ablation), the residual rows pay off in
        # the MLP's two MatMuls and the head; in the attention's they changed nothing
        return QuantConfig("int8", layer_method="rowwise", reduce_range=True, head_bits=8, head_block_size=128,
                           residual_layers=("mlp/",) if precise_activations else (),
                           head_residual=precise_activations)
    if variant == "int4":
        return QuantConfig("int4", layer_method="nbits", block_size=32, head_bits=8, head_block_size=128,
                           eight_bit_layers=("attn/qkv",), eight_bit_method="rowwise", scale_dtype="float16")
    return None


def _check_args(opts: ExportOptions) -> None:
    if opts.variant not in VARIANTS:
        raise ExportError(f"unknown variant '{opts.variant}': use one of {', '.join(VARIANTS)}")
    if opts.graph not in GRAPHS:
        raise ExportError(f"unknown graph '{opts.graph}': use one of {', '.join(GRAPHS)}")
    if opts.graph == "portable" and opts.all_logits:
        raise ExportError("--all-logits is for the contrib graph (the portable graph always outputs every "
                          "position): drop one of the two options")
    if opts.precise_activations and (opts.variant != "int8" or opts.graph != "contrib" or opts.quant):
        raise ExportError("precise activations are for the int8 variant of the contrib graph, without an explicit "
                          "quantization config: drop --precise-activations or use --variant int8 --graph contrib")
    if opts.int4_mix != "auto" and opts.int4_mix not in MIXES:
        raise ExportError(f"unknown int4 mix '{opts.int4_mix}': use auto or one of {', '.join(MIXES)}")
    r = opts.int4_kl_ratio
    number("int4_kl_ratio", r, "a number >= 1", is_number(r) and r >= 1, error=ExportError)
    integer("n_prompts", opts.n_prompts, 1, error=ExportError)
    integer("parity_tokens", opts.parity_tokens, 1, error=ExportError)
    optional_integer("threads", opts.threads, 1, "all cores", error=ExportError)
    opts.thresholds.check()


def _inputs(source: str | Path, opts: ExportOptions) -> list[Path]:
    """Local paths the export reads: OUT_DIR must keep clear of them."""
    paths = [Path(p).expanduser() for p in (source, opts.tokenizer_dir, opts.prompts) if p is not None]
    return [p for p in paths if p.exists()]


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("dialogpt-onnx", "onnx", "onnxruntime", "torch", "transformers", "tokenizers", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _manifest(ckpt: Checkpoint, opts: ExportOptions, quant: QuantConfig | None, mix: dict | None = None) -> dict:
    cfg = ckpt.config
    if opts.graph == "portable":
        io = replace(PORTABLE_IO, max_kv_length=cfg.n_positions)
    else:
        io = contrib_io(opts.all_logits, cfg.n_positions)
    return {
        "variant": opts.variant,
        "graph": opts.graph,
        "source": ckpt.source,
        "model": {**cfg.to_dict(), **cfg.shape.to_manifest(), "tied_embeddings": ckpt.tied},
        "io": io.to_manifest(),
        "quantization": asdict(quant) if quant else None,
        "int4_mix": mix,
        # what parity is checked at, and the lowest level that runs the graph right (each is tested)
        "session": {"graph_optimization_level": "all",
                    **({"min_graph_optimization_level": "basic"} if quant and quant.scale_dtype == "float16" else {})},
        "chat": chat_defaults(),  # for runtimes in other languages (dialogpt_onnx/web): the same defaults
        "tools": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def export_model(source: str | Path, out_dir: str | Path, opts: ExportOptions | None = None) -> ExportResult:
    """Export a GPT-2 / DialoGPT checkpoint (dir or hub id) to an ONNX model dir. Raises ExportError on bad
    input and ParityError when `opts.verify` and parity falls below the thresholds."""
    opts = opts or ExportOptions()
    _check_args(opts)
    check_source(source)
    out = Path(out_dir).expanduser().absolute()
    check_out_dir(out, opts.overwrite, _inputs(source, opts))
    tmp = TempDir(out)  # before anything slow: an unwritable OUT_DIR fails at once
    try:
        return _export(source, out, tmp, opts)
    except Exception as e:
        tmp.discard()  # first: the space it held counts as free in the message
        if disk_full(e):
            raise disk_full_error(out, tmp.expected_bytes) from None
        raise
    except BaseException:
        tmp.discard()
        raise


def chat_defaults() -> dict:
    from dialogpt_onnx.runtime.chat import DEFAULT_HISTORY_TOKENS
    from dialogpt_onnx.runtime.sampling import CHAT_DEFAULTS, SamplingOptions

    base = SamplingOptions()
    return {"do_sample": base.do_sample, "top_k": base.top_k, "top_p": base.top_p, "temperature": base.temperature,
            "no_repeat_ngram_size": base.no_repeat_ngram_size, "min_new_tokens": base.min_new_tokens,
            **CHAT_DEFAULTS, "max_new_tokens": base.max_new_tokens, "max_history_tokens": DEFAULT_HISTORY_TOKENS}


def _export(source: str | Path, out: Path, tmp: TempDir, opts: ExportOptions) -> ExportResult:
    quantized = opts.variant != "fp32"
    mixed = opts.variant == "int4" and opts.graph == "contrib" and opts.quant is None
    stages = _Stages(["load"] + (["int4 mix"] if mixed else []) + ["build"]
                     + (["quantize"] if quantized and opts.graph == "contrib" else [])
                     + ["write", "verify"] + (["ort"] if opts.ort_format else []), opts.progress)
    with stages.stage("load"):
        ckpt = load_checkpoint(source, opts.tokenizer_dir)
        quant = opts.quant or default_quant(opts.variant, opts.precise_activations)
        quant = fit_to_model(quant, ckpt.config.n_embd) if quant else None
        dialogues = load_prompts(opts.prompts, opts.n_prompts)
        tok = build_tokenizer(ckpt.tokenizer_files)
    eos = ckpt.config.eos_token_id
    prompts = [encode_dialogue(tok, d, eos) for d in dialogues]
    longest = max(map(len, prompts)) + opts.parity_tokens
    if longest > ckpt.config.n_positions:
        stages.close()
        raise ExportError(f"parity prompts need {longest} positions, the model has {ckpt.config.n_positions}: "
                          "give shorter prompts or fewer --parity-tokens")
    # the checkpoint as transformers' model (the parity reference, the portable graph's source): made once,
    # when first needed; it shares the checkpoint's arrays
    reference = functools.cache(lambda: torch_model(ckpt))
    mix = None
    if mixed:
        with stages.stage("int4 mix"):
            mix, quant = _int4_mix(ckpt, tmp, opts, _mix_prompts(opts, tok, eos, prompts, ckpt.config.n_positions),
                                   reference)
    with stages.stage("build"):
        if opts.graph == "portable":
            from .portable import build_portable

            graph = GraphEditor.edit(build_portable(ckpt, reference(), quant))  # traced and quantized with standard ops
        else:
            graph = build_graph(ckpt, all_logits=opts.all_logits)
    if quant and opts.graph == "contrib":
        with stages.stage("quantize"):
            graph = quantize(graph, quant)
    with stages.stage("write"):
        tmp.expect(graph.nbytes() + 4_000_000)  # + tokenizer and manifest
        graph.save(tmp.path / MODEL_FILE, external=graph.nbytes() > EXTERNAL_ABOVE)
        requires = floor_of(n.op_type for n in graph.nodes)
        del graph
        write_tokenizer(tok, ckpt.tokenizer_files, tmp.path / TOKENIZER_FILE, eos, ckpt.config.vocab_size)
        raw = _manifest(ckpt, opts, quant, mix)
        write_runtime_configs(tmp.path, ckpt.config, GraphIO.from_manifest(raw["io"]))
        raw["onnxruntime"] = {"requires": requires}  # model.onnx's; model.ort's is its writer's (below)
    with stages.stage("verify"):
        parity = check_parity(reference, tmp.path, Manifest.from_dict(raw), prompts,
                              opts.parity_tokens, threads=opts.threads, progress=opts.progress)
    if opts.ort_format:
        with stages.stage("ort"):
            raw["ort"] = write_ort_format(tmp.path, Manifest.from_dict(raw), prompts, opts.parity_tokens,
                                          opts.threads)
            raw["onnxruntime"]["ort_format_requires"] = raw["tools"]["onnxruntime"]  # older ones may not read it
    stages.close()
    seconds = stages.seconds
    failures = parity.failures(opts.variant, opts.thresholds)
    raw["parity"] = {**parity.to_dict(), "reference": "transformers GPT2LMHeadModel fp32",
                     "thresholds": asdict(opts.thresholds), "passed": not failures}
    raw["export_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    write_manifest(tmp.path, raw, file_table(tmp.path))
    if opts.verify and failures:
        raise ParityError(f"parity below thresholds ({'; '.join(failures)}): nothing written; "
                          "loosen the thresholds or use a more precise variant")
    size = sum(f.stat().st_size for f in tmp.path.iterdir())
    publish(tmp, out)
    return ExportResult(out, parity, failures, seconds, size, mix)


def _int4_mix(ckpt: Checkpoint, tmp: TempDir, opts: ExportOptions, prompts: list[list[int]],
              reference: Callable[[], Any]) -> tuple[dict, QuantConfig]:
    """The int4 mix to write (given, or measured: int4_mix.choose) and what the manifest says of it."""
    base, fit = default_quant("int4"), lambda q: fit_to_model(q, ckpt.config.n_embd)
    assert base is not None
    mix = {"chosen": opts.int4_mix, "rule": "given (--int4-mix)"}
    if opts.int4_mix == "auto":
        tokens = max(opts.parity_tokens, MIX_TOKENS) if max(map(len, prompts)) + MIX_TOKENS <= ckpt.config.n_positions \
            else opts.parity_tokens
        _, mix = choose(base, opts.int4_kl_ratio,
                        lambda n, q: _trial(ckpt, n, q, tmp, opts, prompts, tokens, reference), fit)
    return mix, fit(mix_config(mix["chosen"], base))


def _mix_prompts(opts: ExportOptions, tok: Any, eos: int, prompts: list[list[int]],
                 n_positions: int) -> list[list[int]]:
    """The parity prompts, at least MIX_PROMPTS of them (int4_mix: a choice measured on fewer is noise)."""
    if len(prompts) >= MIX_PROMPTS:
        return prompts
    more = [encode_dialogue(tok, d, eos) for d in load_prompts(opts.prompts, MIX_PROMPTS)]
    return [p for p in more if len(p) + opts.parity_tokens <= n_positions] or prompts


def _trial(ckpt: Checkpoint, name: str, quant: QuantConfig, tmp: TempDir, opts: ExportOptions,
           prompts: list[list[int]], tokens: int, reference: Callable[[], Any]) -> Trial:
    """One int4 mix built, written beside the export and parity-checked (its dir removed after)."""
    work = tmp.path / f"mix-{name}"
    work.mkdir()
    try:
        graph = quantize(build_graph(ckpt, all_logits=opts.all_logits), quant)
        size = graph.nbytes()
        graph.save(work / MODEL_FILE, external=size > EXTERNAL_ABOVE)
        del graph
        report = check_parity(reference, work, Manifest.from_dict(_manifest(ckpt, opts, quant)),
                              prompts, tokens, threads=opts.threads, progress=False)
        return Trial(name, size, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Stages:
    """One progress bar over the pipeline's stages, and the seconds each took (reported in the manifest)."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(names), desc="export", unit="stage", disable=not enabled)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        t = time.perf_counter()
        try:
            yield
        except BaseException:
            self.bar.leave = False  # the error line alone, no half-filled bar above it
            self.close()
            raise
        self.seconds[name] = time.perf_counter() - t
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def write_ort_format(model_dir: Path, manifest: Manifest, prompts: list[list[int]], new_tokens: int,
                     threads: int | None) -> dict:
    """model.ort and required_operators.config beside model.onnx, by onnxruntime's own converter (graph
    optimizations applied at conversion, as its minimal builds need); model.ort must greedy-decode every
    parity prompt token for token as model.onnx does, or the export fails."""
    import contextlib
    import io
    import logging
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from dialogpt_onnx.runtime.generate import generate_ids
    from dialogpt_onnx.runtime.graph import open_graph
    from dialogpt_onnx.runtime.manifest import ORT_MODEL_FILE, ORT_OPERATORS_FILE
    from dialogpt_onnx.runtime.sampling import SamplingOptions

    with tempfile.TemporaryDirectory(dir=model_dir) as work:
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates each step on stdout
            convert_onnx_models_to_ort(model_dir / MODEL_FILE, output_dir=Path(work),
                                       optimization_styles=[OptimizationStyle.Fixed])
        (Path(work) / ORT_MODEL_FILE).replace(model_dir / ORT_MODEL_FILE)
        ops = (Path(work) / "model.required_operators.config").read_text().splitlines()
    # the converter names the temporary path it read; the file says what it was made from instead
    ops = [line for line in ops if not line.startswith("# - ")]
    ops.insert(1, f"# - {ORT_MODEL_FILE} (a dialogpt-onnx export)")
    (model_dir / ORT_OPERATORS_FILE).write_text("\n".join(ops) + "\n")
    opts = SamplingOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    eos = manifest.shape.eos_token_id
    decoded = []
    for fmt in ("onnx", "ort"):
        cache = open_graph(model_dir, manifest, threads=threads, model_format=fmt).new_cache()
        decoded.append([[int(t[0]) for t in generate_ids(cache, [p], opts, eos, stop_at_eos=False)] for p in prompts])
    if decoded[0] != decoded[1]:
        raise ExportError("model.ort decodes other tokens than model.onnx: export without --format ort and report it")
    return {"model": ORT_MODEL_FILE, "required_operators": ORT_OPERATORS_FILE, "optimization_style": "Fixed",
            "greedy_identical_to_onnx": f"{len(prompts)}/{len(prompts)} prompts x {new_tokens} tokens"}
