"""dialogpt-onnx: DialoGPT chat on every ONNX runtime.

    import dialogpt_onnx as dg
    model = dg.load("models/chat-8x256-int8")
    print(model.chat().send("Hi! Do you like music?"))

The names here are the runtime's (onnxruntime, numpy and tokenizers only). The exporter is
`dialogpt_onnx.export` (the export extra), the server `dialogpt_onnx.serve` (the serve extra), training
`dialogpt_onnx.training` (the train extra); `dialogpt-onnx COMMAND` runs each from the shell.
"""

from .runtime import (
    CHAT_DEFAULTS,
    GREEDY,
    ChatSession,
    ContextOverflow,
    DialogModel,
    Generation,
    MMIOptions,
    MMIReranker,
    ModelDirError,
    SamplingOptions,
    Score,
    UsageError,
    chat_options,
    load,
)
from .runtime.cli import VERSION as __version__

__all__ = ["CHAT_DEFAULTS", "GREEDY", "ChatSession", "ContextOverflow", "DialogModel", "Generation", "MMIOptions",
           "MMIReranker", "ModelDirError", "SamplingOptions", "Score", "UsageError", "__version__", "chat_options",
           "load"]
