"""The engines the suite compares. Each one converts a checkpoint once (`prepare`, in the parent
process), then, in its own worker process, loads it and greedy-decodes exactly N new tokens from
given prompt ids (EOS banned until N, so every engine does the same work), reporting when the first
new token was ready, so decode speed comes from one call: (end - first token) / (N - 1)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dialogpt_onnx.runtime.text import EOS_TOKEN_ID

EOS = EOS_TOKEN_ID


class Engine:
    name = ""
    family = ""  # "ours", "pytorch", "optimum", "ctranslate2", "llama.cpp"
    needs: tuple[str, ...] = ()  # importable modules; missing -> skipped with a line saying so
    quantized = False

    def missing(self) -> list[str]:
        return [m for m in self.needs if importlib.util.find_spec(m) is None]

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        """Convert the checkpoint at `src` into `work/<name>` (cached); return the artifact path."""
        return src

    def load(self, artifact: Path, threads: int) -> None:
        raise NotImplementedError

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        """(n new token ids, perf_counter() time at which the first of them was ready)."""
        raise NotImplementedError

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        """Teacher forcing: the logits [len(reply), vocab] that predict each reply token after `context`
        and the reply tokens before it (the fidelity scoreboard's KL divergence and same-top-1)."""
        raise NotImplementedError


class Fp32OrInt8(Engine):
    """A peer measured in fp32 and int8: named `<family>-fp32` / `<family>-int8`."""

    def __init__(self, int8: bool = False) -> None:
        self.int8 = self.quantized = int8
        self.name = f"{self.family}-{'int8' if int8 else 'fp32'}"


class _FirstTokenClock:
    """A transformers streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.first = 0, float("nan")

    def put(self, value) -> None:  # noqa: ANN001
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def plain_generation(model):  # noqa: ANN001, ANN201 - a transformers / Optimum model, returned
    """Drop the checkpoint's generation_config.json: from_pretrained applies it to every generate() call, even
    over do_sample=False (the bundled model's blocks repeated 3-grams, so its "greedy" reference was not)."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=EOS)
    return model


def hf_generate(model, torch, ids: list[int], n: int) -> tuple[list[int], float]:  # noqa: ANN001
    """transformers' generate, greedy, exactly n new tokens (PyTorch and Optimum share it)."""
    clock = _FirstTokenClock()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=EOS,
                             streamer=clock)
    return out[0, len(ids):].tolist(), clock.first


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size


# -- this project -------------------------------------------------------------------------------
class Ours(Engine):
    family = "ours"
    needs = ("onnxruntime",)

    def __init__(self, variant: str, graph: str = "contrib") -> None:
        self.variant, self.graph = variant, graph
        self.name = f"ours-{variant}" + ("-portable" if graph == "portable" else "")
        self.quantized = variant != "fp32"

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        from dialogpt_onnx.export import ExportOptions, export_model

        out = work / self.name
        if not (out / "manifest.json").is_file():
            export_model(src, out, ExportOptions(variant=self.variant, graph=self.graph, overwrite=True,
                                                 progress=False, n_prompts=1, parity_tokens=8, threads=threads))
        return out

    def load(self, artifact: Path, threads: int) -> None:
        from dialogpt_onnx import runtime
        from dialogpt_onnx.runtime.generate import generate_ids

        self.model = runtime.load(artifact, threads=threads)
        self._gen = generate_ids
        self._cache = self.model.graph.new_cache()  # reused across calls, as an app's chat would

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        # EOS banned until n, as every other engine here (without the ban an EOS would end the reply's
        # agreement with the reference: ours "agreed" 0.60 where it agrees 0.95)
        opts = self.model.options(max_new_tokens=n, min_new_tokens=n)
        out, first = [], float("nan")
        for t in self._gen(self._cache, [ids], opts, EOS, stop_at_eos=False):
            if not out:
                first = time.perf_counter()
            out.append(int(t[0]))
        return out, first

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        from .fidelity import teacher_forced_logits

        return teacher_forced_logits(self._cache, context, reply)


def hf_logits(model, torch, context: list[int], reply: list[int]) -> np.ndarray:  # noqa: ANN001
    """transformers' forward over context + reply (PyTorch and Optimum share it)."""
    ids = context + reply[:-1]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.logits[0, len(context) - 1:].float().numpy()


# -- PyTorch ------------------------------------------------------------------------------------
class PyTorch(Fp32OrInt8):
    family = "pytorch"
    needs = ("torch", "transformers")

    def load(self, artifact: Path, threads: int) -> None:
        import torch
        from transformers import GPT2LMHeadModel

        torch.set_num_threads(threads)
        self.torch = torch
        model = GPT2LMHeadModel.from_pretrained(artifact, dtype=torch.float32).eval()
        if self.int8:
            model = _conv1d_to_linear(model)
            # torch.ao dynamic quantization covers nn.Linear only: GPT-2's Conv1D layers are converted first
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = plain_generation(model)

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        return hf_generate(self.model, self.torch, ids, n)

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        return hf_logits(self.model, self.torch, context, reply)


def _conv1d_to_linear(model):  # -> model
    import torch
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data = child.weight.data.T.contiguous()
                lin.bias.data = child.bias.data
                setattr(parent, name, lin)
    return model


# -- Optimum (onnxruntime through ORTModelForCausalLM) -----------------------------------------
class Optimum(Fp32OrInt8):
    family = "optimum"
    needs = ("optimum.onnxruntime", "onnxruntime")

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        out = work / self.name
        if (out / "config.json").is_file():
            return out
        from optimum.onnxruntime import ORTModelForCausalLM

        fp32 = work / "optimum-fp32"
        if not (fp32 / "config.json").is_file():
            model = ORTModelForCausalLM.from_pretrained(src, export=True, use_cache=True)
            model.save_pretrained(fp32)
            _copy_tokenizer(src, fp32)
        if not self.int8:
            return fp32
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        from dialogpt_onnx.export.quantize import quiet

        q = ORTQuantizer.from_pretrained(fp32)
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)  # this CPU's config
        with tempfile.TemporaryDirectory(dir=work) as tmp, quiet():
            q.quantize(save_dir=tmp, quantization_config=qconfig)
            for f in fp32.iterdir():
                if f.suffix != ".onnx" and not f.name.endswith(".onnx_data") and not (Path(tmp) / f.name).exists():
                    shutil.copy(f, Path(tmp) / f.name)
            Path(tmp).rename(out)
        return out

    def load(self, artifact: Path, threads: int) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        name = next(p.name for p in Path(artifact).glob("*.onnx"))
        self.torch = torch
        self.model = plain_generation(ORTModelForCausalLM.from_pretrained(
            artifact, file_name=name, session_options=so, use_cache=True, provider="CPUExecutionProvider"))

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        return hf_generate(self.model, self.torch, ids, n)

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        return hf_logits(self.model, self.torch, context, reply)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        if (Path(src) / f).is_file() and not (dst / f).exists():
            shutil.copyfile(Path(src) / f, dst / f)


# -- CTranslate2 ---------------------------------------------------------------------------------
class CTranslate2(Fp32OrInt8):
    family = "ctranslate2"
    needs = ("ctranslate2",)

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        from ctranslate2.converters import TransformersConverter

        out = work / self.name
        if not (out / "model.bin").is_file():
            TransformersConverter(str(src)).convert(str(out), quantization="int8" if self.int8 else "float32",
                                                    force=True)
        return out

    def load(self, artifact: Path, threads: int) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        self.gen = ctranslate2.Generator(str(artifact), device="cpu", compute_type="int8" if self.int8 else "float32",
                                         intra_threads=threads, inter_threads=1)
        vocab = Tokenizer.from_file(str(artifact / "tokenizer.json")) if (artifact / "tokenizer.json").is_file() \
            else None
        self.id_to_token = vocab.id_to_token if vocab else None
        if self.id_to_token is None:
            import json

            v = json.loads((artifact / "vocabulary.json").read_text())
            self.id_to_token = v.__getitem__

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        first = []

        def on_step(step) -> bool:  # noqa: ANN001 - ctranslate2.GenerationStepResult
            if not first:
                first.append(time.perf_counter())
            return False  # keep going

        res = self.gen.generate_batch([[self.id_to_token(i) for i in ids]], max_length=n, min_length=n,
                                      sampling_topk=1, include_prompt_in_result=False, callback=on_step)
        return list(res[0].sequences_ids[0]), first[0] if first else float("nan")

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        tokens = [self.id_to_token(i) for i in context + reply[:-1]]
        return np.asarray(self.gen.forward_batch([tokens]))[0, len(context) - 1:]


# -- llama.cpp (optional: llama-cpp-python compiles from source) -------------------------------
class LlamaCpp(Engine):
    family = "llama.cpp"
    needs = ("llama_cpp", "gguf")

    def __init__(self, qtype: str) -> None:
        self.qtype = qtype
        self.quantized = qtype != "F32"
        self.name = f"llama.cpp-{qtype}"

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        import subprocess
        import sys

        out = work / f"{self.name}.gguf"
        if out.is_file():
            return out
        script = llama_cpp_converter(work.parent / "llama.cpp-src")
        subprocess.run([sys.executable, str(script), str(src), "--outfile", str(out), "--outtype",
                        {"F32": "f32", "Q8_0": "q8_0"}.get(self.qtype, "f32")], check=True, capture_output=True)
        if self.qtype not in ("F32", "Q8_0"):  # the converter writes neither: llama.cpp quantizes the f32 file
            import llama_cpp

            f32 = work / "llama.cpp-F32.gguf"
            out.rename(f32) if not f32.exists() else out.unlink()
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{self.qtype}")
            llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
        return out

    def load(self, artifact: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(artifact), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        # The thinnest loop the binding offers (llama_decode + last-row logits), greedy with EOS banned as
        # for every engine; Llama.generate's sampler chain would add per-token overhead that is not llama.cpp's.
        llm = self.llm
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        vocab = llm.n_vocab()
        first = float("nan")
        for i in range(n):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))  # the last row, no copy
            logits[EOS] = -np.inf
            out.append(int(np.argmax(logits)))
            if i == 0:
                first = time.perf_counter()
            if i + 1 < n:
                llm.eval([out[-1]])
        return out, first

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        # every position's logits need a context created with logits_all (more memory): made on first use
        if getattr(self, "scorer", None) is None:
            from llama_cpp import Llama

            self.scorer = Llama(model_path=self.llm.model_path, n_ctx=1024, n_threads=self.llm.n_threads,
                                n_batch=512, logits_all=True, verbose=False)
        self.scorer.reset()
        self.scorer.eval(context + reply[:-1])
        return np.array(self.scorer.scores[len(context) - 1: len(context) + len(reply) - 1], dtype=np.float32)


def llama_cpp_converter(cache: Path) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py: $LLAMA_CPP_CONVERT, or taken from the llama-cpp-python sdist of
    the installed version (a package-registry download, cached), whose vendor/llama.cpp bundles it."""
    import os
    import subprocess
    import sys
    import tarfile

    if os.environ.get("LLAMA_CPP_CONVERT"):
        return Path(os.environ["LLAMA_CPP_CONVERT"])
    script = cache / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    import llama_cpp

    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
                    str(cache), f"llama-cpp-python=={llama_cpp.__version__}"], check=True, capture_output=True)
    sdist = next(cache.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/vendor/llama.cpp/", 1)
            if len(rel) == 2 and m.isfile() and (rel[1] == "convert_hf_to_gguf.py"
                                                 or rel[1].startswith(("gguf-py/", "conversion/"))):
                m.name = rel[1]
                tar.extract(m, cache, filter="data")
    return script


def greedy_agreement(a: list[int], b: list[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same / max(len(a), 1)


__all__ = ["EOS", "Engine", "dir_size", "greedy_agreement", "np"]
