"""Checkpoint loaders: every on-disk form becomes (ModelConfig, canonical float32 weights, tokenizer files).

Canonical weight names are transformers' GPT-2 names without the `transformer.` prefix
(`wte.weight`, `h.0.attn.c_attn.weight`, ..., `ln_f.bias`), plus `lm_head.weight` only when it is
not tied to `wte.weight`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ModelConfig, load_config
from .errors import ExportError
from .signals import reraise_interruption

WeightDict = dict[str, np.ndarray]

# Old checkpoints name things differently: DDP's `module.`, pytorch-pretrained-bert's
# `lm_head.decoder`, OpenAI's LayerNorm `g`/`b`.
_PREFIXES = ("module.", "transformer.", "model.")
_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")  # causal-mask buffers, not weights


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: WeightDict
    source: str
    tokenizer_files: dict[str, Path] = field(default_factory=dict)  # name -> path

    @property
    def tied(self) -> bool:
        return "lm_head.weight" not in self.weights


def canonical_name(name: str) -> str | None:
    """Map a checkpoint's tensor name to the canonical one, or None for buffers to drop."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    if name == "lm_head.decoder.weight":
        name = "lm_head.weight"
    if _IGNORED.search(name):
        return None
    name = re.sub(r"(ln_\w+)\.g$", r"\1.weight", name)
    name = re.sub(r"(ln_\w+)\.b$", r"\1.bias", name)
    return name


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    e, inner = cfg.n_embd, cfg.n_inner
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (cfg.vocab_size, e),
        "wpe.weight": (cfg.n_positions, e),
        "ln_f.weight": (e,),
        "ln_f.bias": (e,),
    }
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (e,), p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (e, 3 * e), p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,), p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (e, inner), p + "mlp.c_fc.bias": (inner,),
            p + "mlp.c_proj.weight": (inner, e), p + "mlp.c_proj.bias": (e,),
        })
    return shapes


def validate(cfg: ModelConfig, weights: WeightDict, where: str) -> None:
    """Name every missing or misshapen weight before anything is built."""
    shapes = expected_shapes(cfg)
    problems = [f"{n} missing" for n in shapes if n not in weights]
    problems += [
        f"{n} is {tuple(weights[n].shape)}, config wants {s}"
        for n, s in shapes.items() if n in weights and tuple(weights[n].shape) != s
    ]
    lm = weights.get("lm_head.weight")
    if lm is not None and tuple(lm.shape) != shapes["wte.weight"]:
        problems.append(f"lm_head.weight is {tuple(lm.shape)}, config wants {shapes['wte.weight']}")
    unused = sorted(n for n in weights if n not in shapes and n != "lm_head.weight")
    if unused:  # e.g. a 4-layer checkpoint read with a 2-layer config: refuse, never truncate silently
        groups: dict[str, int] = {}
        for n in unused:
            m = re.match(r"h\.(\d+)\.", n)  # a whole layer beyond n_layer reads as one group
            key = f"h.{m.group(1)}.*" if m and int(m.group(1)) >= cfg.n_layer else n
            groups[key] = groups.get(key, 0) + 1
        shown = ", ".join(f"{k} ({v} tensors)" if v > 1 else k for k, v in list(groups.items())[:4])
        more = f" and {len(groups) - 4} more" if len(groups) > 4 else ""
        problems.insert(0, f"weights the config does not use: {shown}{more}")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise ExportError(f"weights in {where} disagree with its config.json ({shown}): "
                          "give the config.json that belongs to these weights")


def normalize(raw: dict[str, np.ndarray]) -> WeightDict:
    out: WeightDict = {}
    for name, t in raw.items():
        c = canonical_name(name)
        if c is not None:
            out[c] = np.ascontiguousarray(t, dtype=np.float32)
    lm = out.get("lm_head.weight")
    if lm is not None and "wte.weight" in out and np.array_equal(lm, out["wte.weight"]):
        del out["lm_head.weight"]  # tied: keep the tensor once
    return out


def _torch_file(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        with warnings.catch_warnings():  # torch warns on stderr about odd pickle headers before failing on them
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        reraise_interruption()
        raise ExportError(f"cannot read weights from {path} ({type(e).__name__}): "
                          "give a PyTorch state dict (.bin/.pkl/.pt) or model.safetensors") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ExportError(f"{path} holds a {type(sd).__name__}, not a state dict: save model.state_dict()")
    return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def _safetensors_file(path: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        reraise_interruption()
        raise ExportError(f"cannot read {path} ({e}): re-save it with safetensors") from None
    return {k: v.float().numpy() for k, v in sd.items()}


def weight_files(d: Path) -> list[Path]:
    """Weights in a directory, most preferred form first (safetensors, HF .bin, original .pkl/.bin)."""
    st = sorted(d.glob("*.safetensors"))
    if st:
        return st
    hf_bin = sorted(d.glob("pytorch_model*.bin"))
    if hf_bin:
        return hf_bin
    return sorted([*d.glob("*.pkl"), *d.glob("*.bin"), *d.glob("*.pt"), *d.glob("*.pth")])[:1]


def _tokenizer_files(d: Path) -> dict[str, Path]:
    files = {n: d / n for n in ("tokenizer.json", "vocab.json", "merges.txt") if (d / n).is_file()}
    if "tokenizer.json" in files or {"vocab.json", "merges.txt"} <= files.keys():
        return files
    return {}


def load_directory(d: Path, tokenizer_dir: Path | None = None) -> Checkpoint:
    if not d.is_dir():
        raise ExportError(f"{d} is not a directory: give a checkpoint directory (config.json + weights)")
    if not (d / "config.json").is_file():
        raise ExportError(f"{d} has no config.json: give a checkpoint directory with config.json and weights")
    cfg = load_config(d / "config.json")
    files = weight_files(d)
    if not files:
        raise ExportError(f"{d} has no weights: add model.safetensors, pytorch_model.bin or the original .pkl")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        raw.update(_safetensors_file(f) if f.suffix == ".safetensors" else _torch_file(f))
    weights = normalize(raw)
    validate(cfg, weights, str(d))
    tok = _tokenizer_files(tokenizer_dir) if tokenizer_dir else _tokenizer_files(d)
    if not tok:
        where = tokenizer_dir or d
        raise ExportError(f"no tokenizer in {where}: add tokenizer.json or vocab.json + merges.txt, "
                          "or pass --tokenizer DIR")
    return Checkpoint(cfg, weights, str(d), tok)


def looks_like_hub_id(source: str) -> bool:
    """owner/name, and nothing that reads as a local path: a leading `.`, `/` or `~`, or an owner that is an
    existing directory here (models/nope is a mistyped path, never a hub id)."""
    return (bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.startswith((".", "/", "~"))
            and not Path(source).parent.is_dir())


def missing_source(source: str) -> ExportError:
    """No such checkpoint dir: the error, with the closest names beside it."""
    import difflib

    p = Path(source).expanduser()
    parent = p.parent if p.parent.is_dir() else None
    near = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir() if c.is_dir()], n=2) if parent else []
    hint = f"did you mean {' or '.join(str(p.parent / n) for n in near)}? " if near else ""
    return ExportError(f"no such directory: {source}: {hint}give a checkpoint directory or a hub id such as "
                       "microsoft/DialoGPT-medium")


def check_source(source: str | Path) -> None:
    """A source that can be neither a local dir nor a hub id is refused before any work starts."""
    if not Path(source).expanduser().exists() and not looks_like_hub_id(str(source)):
        raise missing_source(str(source))


def download(hub_id: str) -> Path:
    """Fetch a hub checkpoint for users who are online (never needed by tests)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(hub_id, allow_patterns=[
            "config.json", "*.safetensors", "pytorch_model*.bin", "*.json", "merges.txt"])
    except Exception as e:  # noqa: BLE001 - offline, unknown id, auth: all one user-facing answer
        raise ExportError(f"could not fetch '{hub_id}' from the model hub ({type(e).__name__}): "
                          "check the id and network, or give a local checkpoint directory") from None
    return Path(path)


def load_checkpoint(source: str | Path, tokenizer_dir: str | Path | None = None) -> Checkpoint:
    """Load any supported form: a local directory, or a hub id when the machine is online."""
    p = Path(source).expanduser()
    tok = Path(tokenizer_dir).expanduser() if tokenizer_dir else None
    if tok is not None and not tok.is_dir():
        raise ExportError(f"tokenizer dir {tok} does not exist: "
                          "give a dir with tokenizer.json or vocab.json + merges.txt")
    if p.exists():
        return load_directory(p, tok)
    if looks_like_hub_id(str(source)):
        return load_directory(download(str(source)), tok)
    raise missing_source(str(source))


def torch_model(ckpt: Checkpoint):  # -> GPT2LMHeadModel (transformers imported only when called)
    """The checkpoint as transformers' GPT2LMHeadModel in fp32: the parity reference, the portable graph's
    tracing source and the trainer's starting point."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = ckpt.config.to_hf_dict()
    hf["tie_word_embeddings"] = ckpt.tied
    config = GPT2Config(**hf)
    # eager attention is GPT-2's reference math; transformers' SDPA path drops scale_attn_by_inverse_layer_idx
    config._attn_implementation = "eager"
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # no random init: its pages are never touched, the checkpoint's arrays replace them
        model = GPT2LMHeadModel(config).eval()
    # the parameters are the checkpoint's own arrays (no second copy of the weights; training updates them)
    sd = {f"transformer.{k}": torch.from_numpy(v) for k, v in ckpt.weights.items() if k != "lm_head.weight"}
    sd["lm_head.weight"] = torch.from_numpy(ckpt.weights.get("lm_head.weight", ckpt.weights["wte.weight"]))
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()  # assign replaced the tied head's parameter with its own
    return model
