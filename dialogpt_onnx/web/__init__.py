"""The runtime in JavaScript (dialogpt.mjs, for onnxruntime-node and -web) and the in-browser chat site."""
