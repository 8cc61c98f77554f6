"""Encoders: resolving and loading models, and the backends (torch, CUDA, ONNX, ONNX int8) that
turn a batch of texts into vectors. `registry` is the one list of backends and precisions."""
