"""Every engine the benchmarks know, by name (its own module: the peers import the base class from engines)."""
from __future__ import annotations

from .engines import CTranslate2, Engine, LlamaCpp, Optimum, Ours, PyTorch
from .openvino_engine import OpenVinoGenAI


def all_engines() -> list[Engine]:
    return [PyTorch(), PyTorch(int8=True), Ours("fp32"), Ours("int8"), Ours("int4"), Ours("int8", "portable"),
            Optimum(), Optimum(int8=True), CTranslate2(), CTranslate2(int8=True),
            LlamaCpp("F32"), LlamaCpp("Q8_0"), LlamaCpp("Q4_0"), LlamaCpp("Q4_K_M"),
            OpenVinoGenAI("fp32"), OpenVinoGenAI("fp32", "bf16"), OpenVinoGenAI("int8"), OpenVinoGenAI("int4")]
