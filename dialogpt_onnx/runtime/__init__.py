"""dialogpt-onnx runtime: DialoGPT chat and generation on onnxruntime, without torch or transformers."""

from .chat import ChatSession
from .errors import ContextOverflow, ModelDirError, UsageError
from .mmi import MMIOptions, MMIReranker
from .model import DialogModel, load
from .results import Generation, Score
from .sampling import CHAT_DEFAULTS, GREEDY, SamplingOptions, chat_options

__all__ = ["CHAT_DEFAULTS", "GREEDY", "ChatSession", "ContextOverflow", "DialogModel", "Generation", "MMIOptions",
           "MMIReranker", "ModelDirError", "SamplingOptions", "Score", "UsageError", "chat_options", "load"]
