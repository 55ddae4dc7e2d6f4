"""What the numbers were measured on: CPU, flags, cores, library versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import time


def machine_info() -> dict:
    cpu, flags = platform.processor(), []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not cpu.strip():
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = sorted(f for f in line.split(":", 1)[1].split()
                               if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("dialogpt-onnx", "onnxruntime", "onnx", "torch", "transformers", "optimum", "optimum-onnx",
                "ctranslate2", "llama_cpp_python", "openvino", "openvino-genai", "numpy", "tokenizers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": versions}
