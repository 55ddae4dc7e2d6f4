"""OpenVINO GenAI as a peer: optimum-intel's export (fp32, int8 or int4 weight compression, its own
defaults), decoded by openvino_genai.LLMPipeline on the CPU.

Two installs: `pip install openvino-genai` where the suite runs (no torch), and optimum-intel for the
conversion, which pins optimum 2.3 and torchvision: keep it in a venv of its own and name its
`optimum-cli` in $DIALOGPT_OPENVINO_CLI (else `optimum-cli` on PATH is used when it knows `export openvino`).
Prefix caching is off (it is on by default on the CPU: a repeated prompt's first token would be a cache hit,
and every other engine here reads each prompt afresh); fp32 is asked for strictly (INFERENCE_PRECISION_HINT
f32: OpenVINO computes in bf16 by default where the CPU has it; openvino-bf16 is that default, measured beside).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from .engines import Engine


def converter() -> str | None:
    """The optimum-cli that exports to OpenVINO: $DIALOGPT_OPENVINO_CLI, else one on PATH that has it."""
    cli = os.environ.get("DIALOGPT_OPENVINO_CLI") or shutil.which("optimum-cli")
    if not cli:
        return None
    try:
        probe = subprocess.run([cli, "export", "openvino", "--help"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cli if probe.returncode == 0 else None


class OpenVinoGenAI(Engine):
    family = "openvino"
    needs = ("openvino_genai",)

    def __init__(self, weights: str, compute: str = "f32") -> None:
        self.weights = weights  # "fp32" | "int8" | "int4": optimum-cli's --weight-format
        # fp32 weights: "f32" computes strictly in fp32; "bf16" is OpenVINO's own default on CPUs with
        # avx512_bf16 / AMX (the fp32 export, bf16 matmuls): named openvino-bf16
        self.compute = compute
        self.quantized = weights != "fp32" or compute != "f32"
        self.name = f"openvino-{weights if compute == 'f32' else compute}"

    def missing(self) -> list[str]:
        absent = super().missing()
        return absent + ([] if absent or converter() else ["optimum-intel's optimum-cli ($DIALOGPT_OPENVINO_CLI)"])

    def prepare(self, src: Path, work: Path, threads: int) -> Path:
        out = work / f"openvino-{self.weights}"  # openvino-bf16 shares the fp32 conversion
        if (out / "openvino_model.xml").is_file():
            return out
        cli = converter()
        assert cli is not None, "missing() said it is there"
        proc = subprocess.run([cli, "export", "openvino", "--model", str(src), "--task", "text-generation-with-past",
                               "--weight-format", self.weights, str(out)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"optimum-cli export openvino failed: {proc.stderr.strip()[-600:]}")
        return out

    def load(self, artifact: Path, threads: int) -> None:
        import openvino_genai as ov_genai

        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        config = {"INFERENCE_NUM_THREADS": threads, "scheduler_config": scheduler}
        if self.weights == "fp32":
            config["INFERENCE_PRECISION_HINT"] = self.compute
        self.pipe = ov_genai.LLMPipeline(str(artifact), "CPU", **config)
        self._genai = ov_genai
        self._artifact, self._config, self._request = artifact, config, None

    def generate(self, ids: list[int], n: int) -> tuple[list[int], float]:
        import openvino as ov

        g = self._genai
        cfg = g.GenerationConfig()
        cfg.max_new_tokens = cfg.min_new_tokens = n  # EOS banned until n, as every engine here
        cfg.do_sample = False
        cfg.ignore_eos = True
        out: list[int] = []
        first = [float("nan")]

        class Clock(g.StreamerBase):  # token ids as they come: the first one's time
            def write(self, token: int | list[int]) -> object:
                if not out:
                    first[0] = time.perf_counter()
                out.extend([token] if isinstance(token, int) else list(token))
                return g.StreamingStatus.RUNNING

            def end(self) -> None:
                return None

        x = np.asarray([ids], dtype=np.int64)
        inputs = g.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))
        self.pipe.generate(inputs, cfg, Clock())
        return out[:n], first[0]

    def logits(self, context: list[int], reply: list[int]) -> np.ndarray:
        # The pipeline returns no logits: the same IR, compiled with the same hints, one stateful forward
        # over context + reply (its KV state reset first), as hf_logits does for transformers.
        if self._request is None:
            import openvino as ov

            hints = {k: v for k, v in self._config.items() if k != "scheduler_config"}
            model = ov.Core().compile_model(str(self._artifact / "openvino_model.xml"), "CPU", hints)
            self._request = model.create_infer_request()
        ids = np.asarray([context + reply[:-1]], dtype=np.int64)
        self._request.reset_state()
        out = self._request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                   "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                                   "beam_idx": np.zeros(1, dtype=np.int32)})
        return np.asarray(out["logits"])[0, len(context) - 1:].astype(np.float32)

