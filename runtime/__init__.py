"""dialogpt-onnx runtime: DialoGPT chat and generation on onnxruntime, without torch or transformers."""

from .chat import ChatSession
from .errors import ModelDirError
from .model import DialogModel, Generation, Score, load
from .sampling import SamplingOptions

__all__ = ["ChatSession", "DialogModel", "Generation", "ModelDirError", "SamplingOptions", "Score", "load"]
