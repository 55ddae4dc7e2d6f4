"""dialogpt-onnx serving: continuous batching over the runtime, an OpenAI-compatible HTTP server with a
chat page, and Ray Serve replicas. Built on `runtime`; the runtime never imports it."""

from .engine import Engine, EngineClosed, EngineFull, Request

__all__ = ["Engine", "EngineClosed", "EngineFull", "Request"]
