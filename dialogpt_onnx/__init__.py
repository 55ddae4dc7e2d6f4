"""The `dialogpt-onnx` command: one name for every CLI of the project (each stays `python -m PACKAGE`)."""
