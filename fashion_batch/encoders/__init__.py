"""Encoders: resolving and loading models, and the backends (torch, CUDA, ONNX, ONNX int8) that
turn a batch of texts into vectors.

    registry   the one list of backends, precisions and default batch sizes
    models     resolve / load a model, model digest, the seed head, the torch Encoder
    export     torch.onnx export of the whole sentence-transformers forward, cached per node
    int8       int8 quantization of an export (outlier channels split off in fp32)
    onnx       ONNX Runtime sessions, the torch-free tokenizer, OnnxEncoder
    cuda       CudaEncoder: torch on a GPU, tuned for throughput
    load       load_encoder: what an actor calls to get the encoder for its backend and device
"""
