"""dialogpt-onnx exporter: a GPT-2 / DialoGPT checkpoint → an optimized ONNX model dir with a manifest."""

from .errors import ExportError, ParityError
from .parity import Thresholds
from .pipeline import VARIANTS, ExportOptions, ExportResult, export_model
from .quantize import QuantConfig

__all__ = ["VARIANTS", "ExportError", "ExportOptions", "ExportResult", "ParityError", "QuantConfig", "Thresholds",
           "export_model"]
